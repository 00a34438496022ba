/* Forwards every notification unchanged. */
#include "../guest.h"

void exports_pgws_guest_handler_on_notify(pgws_guest_types_notification_t *n,
                                          pgws_guest_types_verdict_t *ret) {
    ret->tag = PGWS_GUEST_TYPES_VERDICT_FORWARD;
    pgws_guest_types_notification_free(n);
}

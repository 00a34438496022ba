/* {{name}}: a pgws guest. It forwards every notification unchanged; change the function below to
 * decide what each message becomes. */
#include "filter.h"

/* n->tenant, n->topic (n->topic.is_some), n->channel and n->body (JSON text, exactly as sent), each
 * a filter_string_t {ptr, len}. Besides FORWARD: ret->tag = PGWS_GUEST_TYPES_VERDICT_DROP, or
 * _REPLACE / _REJECT with ret->val.replace / ret->val.reject set to a malloc'd filter_string_t. */
void exports_pgws_guest_handler_on_notify(pgws_guest_types_notification_t *n,
                                          pgws_guest_types_verdict_t *ret) {
    ret->tag = PGWS_GUEST_TYPES_VERDICT_FORWARD;
    pgws_guest_types_notification_free(n);
}

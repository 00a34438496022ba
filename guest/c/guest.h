/* Small helpers every C example guest shares: turning C strings and buffers into the component
 * model's strings. Returned strings are freed by the generated post-return code, so they must be
 * heap copies. */
#ifndef PGWS_GUEST_H
#define PGWS_GUEST_H

#include "filter.h"
#include "json.h"

static inline filter_string_t owned(const char *s, size_t n) {
    filter_string_t out = {malloc(n ? n : 1), n};
    memcpy(out.ptr, s, n);
    return out;
}

static inline filter_string_t owned_cstr(const char *s) { return owned(s, strlen(s)); }

static inline void verdict_reject(pgws_guest_types_verdict_t *ret, const char *reason) {
    ret->tag = PGWS_GUEST_TYPES_VERDICT_REJECT;
    ret->val.reject = owned_cstr(reason);
}

#endif

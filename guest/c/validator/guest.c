/* Lets through only objects with an integer `id`, a non-empty string `kind`, and (if present) an
 * object `data`; rejects the rest with a reason. */
#include "../guest.h"

typedef struct {
    int id, kind, data; /* 0 absent, else json_kind + 1 */
    bool kind_empty;
} seen_t;

static bool visit(const char *k, size_t kn, json_cur *v, void *ctx) {
    seen_t *seen = ctx;
    json_kind kind = json_kind_at(*v);
    if (json_key_is(k, kn, "id")) seen->id = kind + 1;
    if (json_key_is(k, kn, "kind")) {
        seen->kind = kind + 1;
        json_ws(v);
        seen->kind_empty = kind == J_STRING && v->p + 1 < v->end && v->p[1] == '"';
    }
    if (json_key_is(k, kn, "data")) seen->data = kind + 1;
    return json_skip(v);
}

static const char *check(const char *body, size_t n) {
    if (!json_is_object(body, n)) return "body must be a JSON object";
    seen_t seen = {0};
    json_cur c = {body, body + n};
    if (!json_members(&c, visit, &seen)) return "body is not JSON";
    if (!seen.id) return "missing required field `id`";
    if (seen.id != J_INTEGER + 1) return "field `id` must be an integer";
    if (!seen.kind) return "missing required field `kind`";
    if (seen.kind != J_STRING + 1 || seen.kind_empty) return "field `kind` must be a non-empty string";
    if (seen.data && seen.data != J_OBJECT + 1) return "field `data` must be an object";
    return NULL;
}

void exports_pgws_guest_handler_on_notify(pgws_guest_types_notification_t *n,
                                          pgws_guest_types_verdict_t *ret) {
    const char *reason = check((const char *)n->body.ptr, n->body.len);
    if (reason) {
        verdict_reject(ret, reason);
    } else {
        ret->tag = PGWS_GUEST_TYPES_VERDICT_FORWARD;
    }
    pgws_guest_types_notification_free(n);
}

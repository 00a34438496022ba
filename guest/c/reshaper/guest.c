/* Strips secrets (password, secret, token, keys starting with `_`) at any depth, renames the
 * top-level `usr` to `user`, and stamps the tenant. Non-object bodies pass unchanged. */
#include "../guest.h"

static bool is_secret(const char *k, size_t n) {
    return json_key_is(k, n, "password") || json_key_is(k, n, "secret") ||
           json_key_is(k, n, "token") || (n > 0 && k[0] == '_');
}

static bool copy(json_cur *c, json_buf *out, int depth);

typedef struct {
    json_buf *out;
    int depth;
    bool first;
} members_t;

static bool member(const char *k, size_t kn, json_cur *v, void *ctx) {
    members_t *m = ctx;
    if (is_secret(k, kn)) return json_skip(v);
    if (!m->first) json_puts(m->out, ",");
    m->first = false;
    json_puts(m->out, "\"");
    if (m->depth == 0 && json_key_is(k, kn, "usr")) {
        json_puts(m->out, "user");
    } else {
        json_put(m->out, k, kn);
    }
    json_puts(m->out, "\":");
    return copy(v, m->out, m->depth + 1);
}

/* Copies one value, leaving out secret members of every object in it. */
static bool copy(json_cur *c, json_buf *out, int depth) {
    json_ws(c);
    if (c->p >= c->end) return false;
    if (*c->p == '{') {
        members_t m = {out, depth, true};
        json_puts(out, "{");
        if (!json_members(c, member, &m)) return false;
        json_puts(out, "}");
        return true;
    }
    if (*c->p == '[') {
        c->p++;
        json_puts(out, "[");
        bool first = true;
        for (;;) {
            json_ws(c);
            if (c->p < c->end && *c->p == ']') {
                c->p++;
                break;
            }
            if (!first) json_puts(out, ",");
            first = false;
            if (!copy(c, out, depth + 1)) return false;
            json_ws(c);
            if (c->p < c->end && *c->p == ',') c->p++;
        }
        json_puts(out, "]");
        return true;
    }
    const char *start = c->p;
    if (!json_skip(c)) return false;
    json_put(out, start, (size_t)(c->p - start));
    return true;
}

void exports_pgws_guest_handler_on_notify(pgws_guest_types_notification_t *n,
                                          pgws_guest_types_verdict_t *ret) {
    const char *body = (const char *)n->body.ptr;
    if (!json_is_object(body, n->body.len)) {
        ret->tag = PGWS_GUEST_TYPES_VERDICT_FORWARD;
        pgws_guest_types_notification_free(n);
        return;
    }
    json_buf out = {0};
    json_cur c = {body, body + n->body.len};
    if (!copy(&c, &out, 0)) {
        free(out.data);
        verdict_reject(ret, "body is not JSON");
        pgws_guest_types_notification_free(n);
        return;
    }
    /* Reopen the closing brace to stamp the tenant (tenant names never need escaping). */
    out.len--;
    if (out.len > 1) json_puts(&out, ",");
    json_puts(&out, "\"tenant\":\"");
    json_put(&out, (const char *)n->tenant.ptr, n->tenant.len);
    json_puts(&out, "\"}");
    ret->tag = PGWS_GUEST_TYPES_VERDICT_REPLACE;
    ret->val.replace = (filter_string_t){(uint8_t *)out.data, out.len};
    pgws_guest_types_notification_free(n);
}

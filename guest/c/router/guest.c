/* Routes each message to the topic named by its `kind`; high priority also goes to `alerts` as a
 * summary. No `kind`: dropped. */
#include "../guest.h"

typedef struct {
    const char *kind, *id;
    size_t kind_len, id_len;
    bool high;
} fields_t;

static bool visit(const char *k, size_t kn, json_cur *v, void *ctx) {
    fields_t *f = ctx;
    json_ws(v);
    const char *start = v->p;
    json_kind kind = json_kind_at(*v);
    if (!json_skip(v)) return false;
    if (json_key_is(k, kn, "kind") && kind == J_STRING) {
        f->kind = start + 1;
        f->kind_len = (size_t)(v->p - start) - 2;
    } else if (json_key_is(k, kn, "id")) {
        f->id = start;
        f->id_len = (size_t)(v->p - start);
    } else if (json_key_is(k, kn, "priority")) {
        f->high = kind == J_STRING && (size_t)(v->p - start) == 6 && memcmp(start, "\"high\"", 6) == 0;
    }
    return true;
}

void exports_pgws_guest_handler_on_notify(pgws_guest_types_notification_t *n,
                                          pgws_guest_types_verdict_t *ret) {
    const char *body = (const char *)n->body.ptr;
    fields_t f = {0};
    json_cur c = {body, body + n->body.len};
    if (!json_is_object(body, n->body.len) || !json_members(&c, visit, &f) || !f.kind) {
        ret->tag = PGWS_GUEST_TYPES_VERDICT_DROP;
        pgws_guest_types_notification_free(n);
        return;
    }
    size_t count = f.high ? 2 : 1;
    pgws_guest_types_route_t *routes = calloc(count, sizeof *routes);
    routes[0].topic = owned(f.kind, f.kind_len);
    if (f.high) {
        json_buf summary = {0};
        json_puts(&summary, "{\"alert\":\"");
        json_put(&summary, f.kind, f.kind_len);
        json_puts(&summary, "\",\"id\":");
        if (f.id) {
            json_put(&summary, f.id, f.id_len);
        } else {
            json_puts(&summary, "null");
        }
        json_puts(&summary, "}");
        routes[1].topic = owned_cstr("alerts");
        routes[1].body.is_some = true;
        routes[1].body.val = (filter_string_t){(uint8_t *)summary.data, summary.len};
    }
    ret->tag = PGWS_GUEST_TYPES_VERDICT_ROUTE;
    ret->val.route = (pgws_guest_types_list_route_t){routes, count};
    pgws_guest_types_notification_free(n);
}

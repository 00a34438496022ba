/* A small JSON reader and writer for the C example guests: enough to walk objects, classify values
 * and copy them with members left out. The host has already checked that every body is valid JSON, so
 * this trusts its input's shape and only guards against running off the end. */
#ifndef PGWS_GUEST_JSON_H
#define PGWS_GUEST_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *p;
    const char *end;
} json_cur;

typedef struct {
    char *data;
    size_t len, cap;
} json_buf;

static inline void json_put(json_buf *b, const char *s, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n) cap *= 2;
        b->data = realloc(b->data, cap);
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static inline void json_puts(json_buf *b, const char *s) { json_put(b, s, strlen(s)); }

static inline void json_ws(json_cur *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

/* Moves past a string whose opening quote is at c->p; the raw (still escaped) text is [*s, *s+*n). */
static inline bool json_string(json_cur *c, const char **s, size_t *n) {
    if (c->p >= c->end || *c->p != '"') return false;
    const char *start = ++c->p;
    while (c->p < c->end && *c->p != '"') c->p += (*c->p == '\\') ? 2 : 1;
    if (c->p >= c->end) return false;
    *s = start;
    *n = (size_t)(c->p - start);
    c->p++;
    return true;
}

/* Moves past one value of any kind. */
static inline bool json_skip(json_cur *c) {
    json_ws(c);
    if (c->p >= c->end) return false;
    char open = *c->p;
    if (open == '"') {
        const char *s;
        size_t n;
        return json_string(c, &s, &n);
    }
    if (open == '{' || open == '[') {
        int depth = 0;
        while (c->p < c->end) {
            char ch = *c->p;
            if (ch == '"') {
                const char *s;
                size_t n;
                if (!json_string(c, &s, &n)) return false;
                continue;
            }
            if (ch == '{' || ch == '[') depth++;
            if (ch == '}' || ch == ']') depth--;
            c->p++;
            if (depth == 0) return true;
        }
        return false;
    }
    while (c->p < c->end && !strchr(",}] \t\r\n", *c->p)) c->p++;
    return true;
}

/* Walks the members of the object at c->p, calling visit(key, key_len, value_cursor, ctx) with the
 * cursor on each value; visit must move the cursor past the value. */
typedef bool (*json_visit)(const char *key, size_t key_len, json_cur *value, void *ctx);

static inline bool json_members(json_cur *c, json_visit visit, void *ctx) {
    json_ws(c);
    if (c->p >= c->end || *c->p != '{') return false;
    c->p++;
    for (;;) {
        json_ws(c);
        if (c->p < c->end && *c->p == '}') {
            c->p++;
            return true;
        }
        const char *k;
        size_t kn;
        if (!json_string(c, &k, &kn)) return false;
        json_ws(c);
        if (c->p >= c->end || *c->p != ':') return false;
        c->p++;
        json_ws(c);
        if (!visit(k, kn, c, ctx)) return false;
        json_ws(c);
        if (c->p < c->end && *c->p == ',') c->p++;
    }
}

static inline bool json_key_is(const char *k, size_t n, const char *want) {
    return strlen(want) == n && memcmp(k, want, n) == 0;
}

/* What kind of value starts at c->p. */
typedef enum { J_OBJECT, J_ARRAY, J_STRING, J_INTEGER, J_NUMBER, J_OTHER } json_kind;

static inline json_kind json_kind_at(json_cur c) {
    json_ws(&c);
    if (c.p >= c.end) return J_OTHER;
    switch (*c.p) {
    case '{': return J_OBJECT;
    case '[': return J_ARRAY;
    case '"': return J_STRING;
    case 't': case 'f': case 'n': return J_OTHER;
    default: {
        const char *start = c.p;
        json_skip(&c);
        for (const char *q = start; q < c.p; q++)
            if (*q == '.' || *q == 'e' || *q == 'E') return J_NUMBER;
        return J_INTEGER;
    }
    }
}

/* Does the body start with an object? */
static inline bool json_is_object(const char *body, size_t n) {
    json_cur c = {body, body + n};
    return json_kind_at(c) == J_OBJECT;
}

#endif

/* A minimal JSON reader for the vector checker. Numbers are kept as text,
 * so integers of any size (timestamp_ns) survive. */
#include "json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *s;
    size_t len, pos;
    char *err;
    size_t err_size;
} reader;

static json *parse_value(reader *r, int depth);

static void *fail(reader *r, const char *what)
{
    if (r->err && !r->err[0])
        snprintf(r->err, r->err_size, "%s at offset %zu", what, r->pos);
    return NULL;
}

static void skip_ws(reader *r)
{
    while (r->pos < r->len && strchr(" \t\r\n", r->s[r->pos]) && r->s[r->pos])
        r->pos++;
}

static json *new_node(json_type type)
{
    json *j = calloc(1, sizeof(json));
    if (j)
        j->type = type;
    return j;
}

static int append_utf8(char *out, size_t *n, uint32_t cp)
{
    if (cp < 0x80) {
        out[(*n)++] = (char)cp;
    } else if (cp < 0x800) {
        out[(*n)++] = (char)(0xC0 | cp >> 6);
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out[(*n)++] = (char)(0xE0 | cp >> 12);
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        out[(*n)++] = (char)(0xF0 | cp >> 18);
        out[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    }
    return 0;
}

static int read_hex4(reader *r, uint32_t *v)
{
    size_t i;
    *v = 0;
    if (r->pos + 4 > r->len)
        return -1;
    for (i = 0; i < 4; i++) {
        char ch = r->s[r->pos++];
        *v <<= 4;
        if (ch >= '0' && ch <= '9')
            *v |= (uint32_t)(ch - '0');
        else if (ch >= 'a' && ch <= 'f')
            *v |= (uint32_t)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F')
            *v |= (uint32_t)(ch - 'A' + 10);
        else
            return -1;
    }
    return 0;
}

/* Parse a string at r->pos (on the opening quote) into a malloc'd buffer. */
static char *parse_string(reader *r, size_t *out_len)
{
    size_t start = ++r->pos, n = 0;
    /* the decoded string is never longer than the source */
    char *out;
    while (r->pos < r->len && r->s[r->pos] != '"')
        r->pos += r->s[r->pos] == '\\' ? 2 : 1;
    if (r->pos >= r->len)
        return fail(r, "unterminated string");
    out = malloc(r->pos - start + 1);
    if (!out)
        return fail(r, "out of memory");
    r->pos = start;
    while (r->s[r->pos] != '"') {
        char ch = r->s[r->pos++];
        if (ch != '\\') {
            out[n++] = ch;
            continue;
        }
        ch = r->s[r->pos++];
        switch (ch) {
        case '"': case '\\': case '/': out[n++] = ch; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u': {
            uint32_t cp, lo;
            if (read_hex4(r, &cp))
                goto bad;
            if (cp >= 0xD800 && cp <= 0xDBFF && r->pos + 6 <= r->len && r->s[r->pos] == '\\' &&
                r->s[r->pos + 1] == 'u') {
                r->pos += 2;
                if (read_hex4(r, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                    goto bad;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            append_utf8(out, &n, cp);
            break;
        }
        default:
            goto bad;
        }
    }
    r->pos++;
    out[n] = 0;
    *out_len = n;
    return out;
bad:
    free(out);
    return fail(r, "bad escape");
}

static int push(json *j, json *item, char *key)
{
    json **items = realloc(j->items, (j->count + 1) * sizeof *items);
    if (!items)
        return -1;
    j->items = items;
    if (j->type == JSON_OBJECT) {
        char **keys = realloc(j->keys, (j->count + 1) * sizeof *keys);
        if (!keys)
            return -1;
        j->keys = keys;
        j->keys[j->count] = key;
    }
    j->items[j->count++] = item;
    return 0;
}

static json *parse_container(reader *r, int depth, json_type type)
{
    char close = type == JSON_ARRAY ? ']' : '}';
    json *j = new_node(type);
    if (!j)
        return fail(r, "out of memory");
    j->type = type;
    r->pos++;
    skip_ws(r);
    if (r->pos < r->len && r->s[r->pos] == close) {
        r->pos++;
        return j;
    }
    for (;;) {
        char *key = NULL;
        size_t key_len;
        json *item;
        skip_ws(r);
        if (type == JSON_OBJECT) {
            if (r->pos >= r->len || r->s[r->pos] != '"' || !(key = parse_string(r, &key_len)))
                goto bad;
            skip_ws(r);
            if (r->pos >= r->len || r->s[r->pos] != ':') {
                free(key);
                goto bad;
            }
            r->pos++;
        }
        item = parse_value(r, depth + 1);
        if (!item || push(j, item, key)) {
            free(key);
            json_free(item);
            goto bad;
        }
        skip_ws(r);
        if (r->pos < r->len && r->s[r->pos] == ',') {
            r->pos++;
            continue;
        }
        if (r->pos < r->len && r->s[r->pos] == close) {
            r->pos++;
            return j;
        }
        goto bad;
    }
bad:
    json_free(j);
    return fail(r, "bad array or object");
}

static json *parse_value(reader *r, int depth)
{
    json *j;
    skip_ws(r);
    if (depth > 64 || r->pos >= r->len)
        return fail(r, "unexpected end or nesting");
    switch (r->s[r->pos]) {
    case '{':
        return parse_container(r, depth, JSON_OBJECT);
    case '[':
        return parse_container(r, depth, JSON_ARRAY);
    case '"':
        j = new_node(JSON_STRING);
        if (!j)
            return fail(r, "out of memory");
        j->type = JSON_STRING;
        j->text = parse_string(r, &j->len);
        if (!j->text) {
            free(j);
            return NULL;
        }
        return j;
    default:
        break;
    }
    j = new_node(JSON_NULL);
    if (!j)
        return fail(r, "out of memory");
    if (r->len - r->pos >= 4 && memcmp(r->s + r->pos, "null", 4) == 0) {
        j->type = JSON_NULL;
        r->pos += 4;
    } else if (r->len - r->pos >= 4 && memcmp(r->s + r->pos, "true", 4) == 0) {
        j->type = JSON_BOOL;
        j->boolean = 1;
        r->pos += 4;
    } else if (r->len - r->pos >= 5 && memcmp(r->s + r->pos, "false", 5) == 0) {
        j->type = JSON_BOOL;
        r->pos += 5;
    } else {
        size_t start = r->pos;
        while (r->pos < r->len && strchr("+-.eE0123456789", r->s[r->pos]) && r->s[r->pos])
            r->pos++;
        if (r->pos == start) {
            free(j);
            return fail(r, "unexpected character");
        }
        j->type = JSON_NUMBER;
        j->len = r->pos - start;
        j->text = malloc(j->len + 1);
        if (!j->text) {
            free(j);
            return fail(r, "out of memory");
        }
        memcpy(j->text, r->s + start, j->len);
        j->text[j->len] = 0;
    }
    return j;
}

json *json_parse(const char *text, size_t len, char *err, size_t err_size)
{
    reader r = {text, len, 0, err, err_size};
    json *j;
    if (err && err_size)
        err[0] = 0;
    j = parse_value(&r, 0);
    skip_ws(&r);
    if (j && r.pos != len) {
        json_free(j);
        return fail(&r, "trailing characters");
    }
    return j;
}

void json_free(json *j)
{
    size_t i;
    if (!j)
        return;
    for (i = 0; i < j->count; i++) {
        json_free(j->items[i]);
        if (j->keys)
            free(j->keys[i]);
    }
    free(j->items);
    free(j->keys);
    free(j->text);
    free(j);
}

const json *json_get(const json *obj, const char *key)
{
    size_t i;
    if (!obj || obj->type != JSON_OBJECT)
        return NULL;
    for (i = 0; i < obj->count; i++)
        if (strcmp(obj->keys[i], key) == 0)
            return obj->items[i];
    return NULL;
}

char *json_read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    char *buf;
    long size;
    if (!fp)
        return NULL;
    if (fseek(fp, 0, SEEK_END) || (size = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET)) {
        fclose(fp);
        return NULL;
    }
    buf = malloc((size_t)size + 1);
    if (buf && fread(buf, 1, (size_t)size, fp) != (size_t)size) {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    if (buf) {
        buf[size] = 0;
        *len = (size_t)size;
    }
    return buf;
}

/* A minimal JSON reader for the vector checker (the JSON files of tests/vectors). */
#ifndef ZB_JSON_H
#define ZB_JSON_H

#include <stddef.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json {
    json_type type;
    int boolean;          /* JSON_BOOL */
    char *text;           /* JSON_STRING: UTF-8 (NUL-terminated, may hold NUL); JSON_NUMBER: as written */
    size_t len;           /* length of text */
    size_t count;         /* JSON_ARRAY, JSON_OBJECT: number of items */
    struct json **items;  /* the values, in order */
    char **keys;          /* JSON_OBJECT: the keys, in order */
} json;

/* Parse text; NULL on error (with a message in err). */
json *json_parse(const char *text, size_t len, char *err, size_t err_size);
void json_free(json *j);
/* The member key of an object, or NULL. */
const json *json_get(const json *obj, const char *key);
/* Read a whole file into a NUL-terminated buffer; NULL on error. */
char *json_read_file(const char *path, size_t *len);

#endif

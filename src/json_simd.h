/*
 * json_simd: the C interface of entsync's small C++ shim over simdjson's
 * DOM parser (src/json_simd.cc). Only src/json.c uses it.
 *
 * A parser keeps one padded input buffer, one simdjson DOM parser and one
 * array of nodes, all reused from document to document, so decoding a
 * record allocates nothing once they have grown. Nothing here raises a Lua
 * error or lets a C++ exception out (the shim is built with
 * -fno-exceptions and allocates with malloc and nothrow new).
 *
 * A parsed document is given as its values in document order, as nodes: a
 * scalar is one node; an array is a node whose len is its item count,
 * followed by the items; an object is a node whose len is its member
 * count, followed by each member as a string node (the key) and the
 * value's nodes. A container's as.nodes counts its nodes, itself
 * included, so the node after it is found in one step (entsync_json_node_after
 * in json.h). String nodes point into the parser (unescaped, not
 * NUL-terminated, possibly holding NUL bytes) and stay valid until the next
 * parse or release.
 */
#ifndef ENTSYNC_JSON_SIMD_H
#define ENTSYNC_JSON_SIMD_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Containers nested deeper than this are an error (ENTSYNC_JSON_DEPTH). */
#define ENTSYNC_JSON_MAX_DEPTH 256

enum entsync_json_type {
    ENTSYNC_JSON_NULL,
    ENTSYNC_JSON_FALSE,
    ENTSYNC_JSON_TRUE,
    ENTSYNC_JSON_INTEGER, /* fits an int64 */
    ENTSYNC_JSON_FLOAT,   /* every other number, uint64 above int64 included */
    ENTSYNC_JSON_STRING,
    ENTSYNC_JSON_ARRAY,
    ENTSYNC_JSON_OBJECT
};

typedef struct entsync_json_node {
    int type;   /* enum entsync_json_type */
    size_t len; /* bytes of a string; items of an array; members of an object */
    union {
        long long integer;
        double number;
        const char *string;
        size_t nodes; /* an array or object: its nodes, itself included */
    } as;
} entsync_json_node;

/* What a parse found, from simdjson's error codes. */
enum entsync_json_status {
    ENTSYNC_JSON_OK,
    ENTSYNC_JSON_EMPTY,    /* nothing but white space */
    ENTSYNC_JSON_SYNTAX,   /* structure: commas, brackets, keys, trailing content */
    ENTSYNC_JSON_LITERAL,  /* a bad true, false or null */
    ENTSYNC_JSON_NUMBER,   /* a bad number, or one out of range (1e400, or beyond 64 bits) */
    ENTSYNC_JSON_ESCAPE,   /* a bad escape in a string */
    ENTSYNC_JSON_UNCLOSED, /* a string never closed */
    ENTSYNC_JSON_CONTROL,  /* an unescaped control character in a string */
    ENTSYNC_JSON_UTF8,     /* invalid UTF-8 */
    ENTSYNC_JSON_DEPTH,    /* nested deeper than ENTSYNC_JSON_MAX_DEPTH */
    ENTSYNC_JSON_TOO_BIG,  /* over simdjson's size limit (4 GiB) */
    ENTSYNC_JSON_NOMEM,
    ENTSYNC_JSON_OTHER     /* anything else: see the detail text */
};

typedef struct entsync_json_parser entsync_json_parser;

/* A new parser, or NULL when out of memory. */
entsync_json_parser *entsync_json_parser_new(void);

void entsync_json_parser_free(entsync_json_parser *parser);

/* The parser's input buffer, made room for len bytes and simdjson's
 * padding after them; NULL when out of memory. Write the text there, then
 * parse it: the text is never copied again. */
char *entsync_json_buffer(entsync_json_parser *parser, size_t len);

/* Parses the first len bytes of the input buffer. On ENTSYNC_JSON_OK sets
 * *nodes to the document's first node. On any other status sets *detail
 * to simdjson's own message. */
int entsync_json_parse(entsync_json_parser *parser, size_t len, const entsync_json_node **nodes,
                       const char **detail);

/* The bytes simdjson reads past a text's end: a buffer that keeps this
 * many readable bytes after its text can be parsed where it is. */
#define ENTSYNC_JSON_PADDING 64

/* Parses len bytes of text where they are, as entsync_json_parse parses
 * the input buffer: text is followed by ENTSYNC_JSON_PADDING readable
 * bytes (zeroed, so that none is uninitialised), which the parse reads and
 * never writes. The nodes point into the parser, never into text. */
int entsync_json_parse_padded(entsync_json_parser *parser, const char *text, size_t len,
                              const entsync_json_node **nodes, const char **detail);

/* Done with the nodes of the last parse: a parser that grew for a large
 * document gives that memory back here, so one big document does not pin
 * its size for the life of the Lua state. */
void entsync_json_release(entsync_json_parser *parser);

#ifdef __cplusplus
}
#endif

#endif

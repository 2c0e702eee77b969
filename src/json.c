/*
 * json: the Lua binding of entsync's JSON codec. Decoding walks the nodes
 * simdjson's shim gives (json_simd.h) and pushes Lua values; encoding is
 * written here. See json.h for the Lua interface.
 */
#include "json.h"

#include "document.h"
#include "json_simd.h"
#include "record.h"

#include <lauxlib.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OBJECT_MT "entsync.json.object"
#define ARRAY_MT "entsync.json.array"
#define PARSER_META "entsync.json.parser"
#define ENCODER_META "entsync.json.encoder"

#define MAX_DEPTH ENTSYNC_JSON_MAX_DEPTH
#define MESSAGE_SIZE 256

/* Buffers that grew past these for one large value are given back after it. */
#define KEEP_BYTES ((size_t)1 << 20)
#define KEEP_KEYS ((size_t)1 << 16)

/* The functions' upvalues: their state (parser or encoder), then the two
 * metatables. */
#define UV_STATE lua_upvalueindex(1)
#define UV_OBJECT lua_upvalueindex(2)
#define UV_ARRAY lua_upvalueindex(3)

/* Valid UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF):
 * the length of the sequence at s, or 0 when it is not valid. */
static size_t utf8_sequence(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return avail >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (avail < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F))
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (avail < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        if ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] > 0x8F))
            return 0;
        return 4;
    }
    return 0;
}

/* The two marks, made once per Lua state and kept in the registry, so a
 * second load of the module marks with the same tables. */
static void push_mark(lua_State *L, const char *name)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, name) == LUA_TTABLE)
        return;
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, name);
}

/* === Decoding ========================================================== */

/* One simdjson parser per Lua state, made at the first decode. busy is
 * set while its nodes are turned into Lua values: a finalizer that runs
 * then and decodes gets a parser of its own instead. (A memory error
 * raised half-way leaves busy set; later decodes are then still right,
 * each on a parser of its own, only slower.) */
typedef struct parser_box {
    entsync_json_parser *parser;
    int busy;
} parser_box;

static int parser_gc(lua_State *L)
{
    parser_box *box = luaL_checkudata(L, 1, PARSER_META);
    entsync_json_parser_free(box->parser);
    box->parser = NULL;
    return 0;
}

/* A zeroed userdata whose metatable meta frees what it holds. */
static void *push_box(lua_State *L, size_t size, const char *meta, lua_CFunction gc)
{
    void *box = lua_newuserdatauv(L, size, 0);
    memset(box, 0, size);
    if (luaL_newmetatable(L, meta)) {
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return box;
}

static parser_box *push_parser_box(lua_State *L)
{
    return push_box(L, sizeof(parser_box), PARSER_META, parser_gc);
}

/* Pushes the value whose nodes start at n, its objects and arrays marked
 * with the tables at object_mt and array_mt (indices that stay valid as
 * the stack grows: upvalues or absolute); returns the node after them. */
static const entsync_json_node *push_marked(lua_State *L, const entsync_json_node *n, int object_mt, int array_mt)
{
    switch (n->type) {
    case ENTSYNC_JSON_NULL:
        lua_pushlightuserdata(L, NULL);
        return n + 1;
    case ENTSYNC_JSON_FALSE:
        lua_pushboolean(L, 0);
        return n + 1;
    case ENTSYNC_JSON_TRUE:
        lua_pushboolean(L, 1);
        return n + 1;
    case ENTSYNC_JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)n->as.integer);
        return n + 1;
    case ENTSYNC_JSON_FLOAT:
        lua_pushnumber(L, (lua_Number)n->as.number);
        return n + 1;
    case ENTSYNC_JSON_STRING:
        lua_pushlstring(L, n->as.string, n->len);
        return n + 1;
    case ENTSYNC_JSON_ARRAY: {
        size_t count = n->len;
        luaL_checkstack(L, 3, "json: value too deep");
        lua_createtable(L, count > INT32_MAX ? INT32_MAX : (int)count, 0);
        lua_pushvalue(L, array_mt);
        lua_setmetatable(L, -2);
        n++;
        for (size_t i = 1; i <= count; i++) {
            n = push_marked(L, n, object_mt, array_mt);
            lua_rawseti(L, -2, (lua_Integer)i);
        }
        return n;
    }
    default: { /* ENTSYNC_JSON_OBJECT */
        size_t count = n->len;
        luaL_checkstack(L, 4, "json: value too deep");
        lua_createtable(L, 0, count > INT32_MAX ? INT32_MAX : (int)count);
        lua_pushvalue(L, object_mt);
        lua_setmetatable(L, -2);
        n++;
        for (size_t i = 0; i < count; i++) {
            lua_pushlstring(L, n->as.string, n->len);
            n = push_marked(L, n + 1, object_mt, array_mt);
            lua_rawset(L, -3); /* a repeated key: the last value wins */
        }
        return n;
    }
    }
}

const entsync_json_node *entsync_json_push_node(lua_State *L, const entsync_json_node *n, int object_mt, int array_mt)
{
    return push_marked(L, n, lua_absindex(L, object_mt), lua_absindex(L, array_mt));
}

static const entsync_json_node *push_node(lua_State *L, const entsync_json_node *n)
{
    return push_marked(L, n, UV_OBJECT, UV_ARRAY);
}

/* --- Explaining an error ------------------------------------------------
 *
 * simdjson says what kind of error a text has, not where. When it fails,
 * this small scanner reads the text again to find the first error and its
 * byte offset (1-based: "at byte N", the text's own string index). It runs
 * only after a failed parse, so it is plain rather than fast. It also
 * finds integers beyond 64 bits, which are valid JSON that simdjson's DOM
 * rejects: those are then read as floats (see reparse_big_integers). */

typedef struct scanner {
    const unsigned char *s;
    size_t len, pos;
    int big;   /* an integer beyond 64 bits (finite as a float) was seen */
    char *msg; /* the first error's message, once found */
    size_t size;
} scanner;

static int scan_fail(scanner *sc, size_t at, const char *fmt, ...)
{
    char what[MESSAGE_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(sc->msg, sc->size, "%s at byte %zu", what, at + 1);
    return 0;
}

static int scan_end(scanner *sc)
{
    snprintf(sc->msg, sc->size, "unexpected end of input");
    return 0;
}

/* How a byte shows in a message. */
static const char *shown(unsigned char c, char *out, size_t size)
{
    if (c > 0x20 && c < 0x7F)
        snprintf(out, size, "'%c'", c);
    else
        snprintf(out, size, "byte 0x%02X", c);
    return out;
}

static int scan_expected(scanner *sc, const char *what)
{
    char found[16];
    if (sc->pos >= sc->len)
        return scan_end(sc);
    return scan_fail(sc, sc->pos, "expected %s, found %s", what, shown(sc->s[sc->pos], found, sizeof found));
}

static void scan_space(scanner *sc)
{
    while (sc->pos < sc->len) {
        unsigned char c = sc->s[sc->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            return;
        sc->pos++;
    }
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The code unit of a \uXXXX escape whose backslash is at i, or -1. */
static long unicode_escape(const scanner *sc, size_t i)
{
    if (i + 6 > sc->len || sc->s[i] != '\\' || sc->s[i + 1] != 'u')
        return -1;
    long unit = 0;
    for (size_t k = i + 2; k < i + 6; k++) {
        int h = hex_value(sc->s[k]);
        if (h < 0)
            return -1;
        unit = unit * 16 + h;
    }
    return unit;
}

static int scan_string(scanner *sc)
{
    size_t start = sc->pos++;
    while (sc->pos < sc->len) {
        unsigned char c = sc->s[sc->pos];
        if (c == '"') {
            sc->pos++;
            return 1;
        }
        if (c == '\\') {
            if (sc->pos + 1 >= sc->len)
                break;
            unsigned char e = sc->s[sc->pos + 1];
            if (e == 'u') {
                long unit = unicode_escape(sc, sc->pos);
                if (unit < 0)
                    return scan_fail(sc, sc->pos, "invalid \\u escape in a string (four hex digits expected)");
                if (unit >= 0xDC00 && unit <= 0xDFFF)
                    return scan_fail(sc, sc->pos, "a lone UTF-16 surrogate (\\u%04lX) in a string", unit);
                if (unit >= 0xD800 && unit <= 0xDBFF) {
                    long low = unicode_escape(sc, sc->pos + 6);
                    if (low < 0xDC00 || low > 0xDFFF)
                        return scan_fail(sc, sc->pos, "a lone UTF-16 surrogate (\\u%04lX) in a string", unit);
                    sc->pos += 6;
                }
                sc->pos += 6;
                continue;
            }
            if (!strchr("\"\\/bfnrt", e) || e == '\0') {
                char found[16];
                return scan_fail(sc, sc->pos, "invalid escape in a string (a backslash before %s)",
                                 shown(e, found, sizeof found));
            }
            sc->pos += 2;
            continue;
        }
        if (c < 0x20)
            return scan_fail(sc, sc->pos, "a control character (such as a NUL byte) inside a string must be escaped: "
                                          "found byte 0x%02X", c);
        if (c >= 0x80) {
            size_t n = utf8_sequence(sc->s + sc->pos, sc->len - sc->pos);
            if (n == 0)
                return scan_fail(sc, sc->pos, "invalid UTF-8 in a string");
            sc->pos += n;
            continue;
        }
        sc->pos++;
    }
    return scan_fail(sc, start, "unclosed string starting");
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Whether an integer's text (an optional '-', then digits without a
 * leading zero) fits an int64, or a uint64 when it is not negative. */
static int fits_64_bits(const unsigned char *s, size_t len)
{
    int negative = s[0] == '-';
    const char *limit = negative ? "9223372036854775808" : "18446744073709551615";
    size_t digits = len - (size_t)negative, limit_len = strlen(limit);
    if (digits != limit_len)
        return digits < limit_len;
    return memcmp(s + negative, limit, limit_len) <= 0;
}

static int is_number_byte(unsigned char c)
{
    return is_digit(c) || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

/* The number's value as strtod reads it: HUGE_VAL when out of range. */
static double number_value(const unsigned char *s, size_t len)
{
    char small[128];
    char *text = len < sizeof small ? small : malloc(len + 1);
    if (!text)
        return 0; /* out of memory: let the fallback message stand */
    memcpy(text, s, len);
    text[len] = '\0';
    double value = strtod(text, NULL);
    if (text != small)
        free(text);
    return value;
}

static int scan_number(scanner *sc)
{
    const unsigned char *s = sc->s;
    size_t start = sc->pos, end = start, i = start;
    while (end < sc->len && is_number_byte(s[end]))
        end++;
    int integral = 1;
    if (i < end && s[i] == '-')
        i++;
    if (i == end || !is_digit(s[i]))
        return scan_fail(sc, start, "invalid number");
    if (s[i] == '0')
        i++;
    else
        while (i < end && is_digit(s[i]))
            i++;
    if (i < end && s[i] == '.') {
        integral = 0;
        if (++i == end || !is_digit(s[i]))
            return scan_fail(sc, start, "invalid number");
        while (i < end && is_digit(s[i]))
            i++;
    }
    if (i < end && (s[i] == 'e' || s[i] == 'E')) {
        integral = 0;
        i++;
        if (i < end && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i == end || !is_digit(s[i]))
            return scan_fail(sc, start, "invalid number");
        while (i < end && is_digit(s[i]))
            i++;
    }
    if (i != end)
        return scan_fail(sc, start, "invalid number");
    if (!integral || !fits_64_bits(s + start, end - start)) {
        if (isinf(number_value(s + start, end - start)))
            return scan_fail(sc, start, "number out of range");
        if (integral)
            sc->big = 1;
    }
    sc->pos = end;
    return 1;
}

static int scan_value(scanner *sc, int depth);

static int scan_container(scanner *sc, int depth, int object)
{
    unsigned char close = object ? '}' : ']';
    if (depth >= MAX_DEPTH)
        return scan_fail(sc, sc->pos, "nested deeper than %d levels", MAX_DEPTH);
    sc->pos++;
    scan_space(sc);
    if (sc->pos < sc->len && sc->s[sc->pos] == close) {
        sc->pos++;
        return 1;
    }
    for (;;) {
        if (object) {
            if (sc->pos >= sc->len || sc->s[sc->pos] != '"')
                return scan_expected(sc, "a string key");
            if (!scan_string(sc))
                return 0;
            scan_space(sc);
            if (sc->pos >= sc->len || sc->s[sc->pos] != ':')
                return scan_expected(sc, "':' after a key");
            sc->pos++;
            scan_space(sc);
        }
        if (!scan_value(sc, depth + 1))
            return 0;
        scan_space(sc);
        if (sc->pos < sc->len && sc->s[sc->pos] == close) {
            sc->pos++;
            return 1;
        }
        if (sc->pos >= sc->len || sc->s[sc->pos] != ',')
            return scan_expected(sc, object ? "',' or '}'" : "',' or ']'");
        sc->pos++;
        scan_space(sc);
    }
}

static int scan_literal(scanner *sc, const char *word)
{
    size_t n = strlen(word);
    if (sc->len - sc->pos < n || memcmp(sc->s + sc->pos, word, n) != 0)
        return scan_fail(sc, sc->pos, "invalid literal (true, false or null expected)");
    sc->pos += n;
    return 1;
}

static int scan_value(scanner *sc, int depth)
{
    if (sc->pos >= sc->len)
        return scan_end(sc);
    unsigned char c = sc->s[sc->pos];
    switch (c) {
    case '{':
        return scan_container(sc, depth, 1);
    case '[':
        return scan_container(sc, depth, 0);
    case '"':
        return scan_string(sc);
    case 't':
        return scan_literal(sc, "true");
    case 'f':
        return scan_literal(sc, "false");
    case 'n':
        return scan_literal(sc, "null");
    default:
        if (c == '-' || is_digit(c))
            return scan_number(sc);
        if (c >= 0x80 && utf8_sequence(sc->s + sc->pos, sc->len - sc->pos) == 0)
            return scan_fail(sc, sc->pos, "invalid UTF-8");
        return scan_expected(sc, "a value");
    }
}

/* Scans a whole text: 1 when it holds no error (sc->big tells whether it
 * has integers beyond 64 bits), else 0 with the message written. */
static int scan_text(scanner *sc)
{
    scan_space(sc);
    if (!scan_value(sc, 0))
        return 0;
    scan_space(sc);
    if (sc->pos < sc->len)
        return scan_fail(sc, sc->pos, "unexpected content after the JSON value");
    return 1;
}

/* The message of a simdjson status, for when the scanner finds nothing
 * more precise. */
static void status_message(int status, const char *detail, char *msg, size_t size)
{
    const char *text;
    switch (status) {
    case ENTSYNC_JSON_EMPTY:
        text = "empty input: no JSON value";
        break;
    case ENTSYNC_JSON_SYNTAX:
        text = "not JSON: a missing or extra comma, bracket, colon or key";
        break;
    case ENTSYNC_JSON_LITERAL:
        text = "invalid literal (true, false or null expected)";
        break;
    case ENTSYNC_JSON_NUMBER:
        text = "invalid number, or a number out of range";
        break;
    case ENTSYNC_JSON_ESCAPE:
        text = "invalid escape in a string";
        break;
    case ENTSYNC_JSON_UNCLOSED:
        text = "unclosed string";
        break;
    case ENTSYNC_JSON_CONTROL:
        text = "a control character (such as a NUL byte) inside a string must be escaped";
        break;
    case ENTSYNC_JSON_UTF8:
        text = "invalid UTF-8 in a string";
        break;
    case ENTSYNC_JSON_DEPTH:
        snprintf(msg, size, "nested deeper than %d levels", MAX_DEPTH);
        return;
    case ENTSYNC_JSON_TOO_BIG:
        text = "the text is too large (simdjson reads at most 4 GiB)";
        break;
    case ENTSYNC_JSON_NOMEM:
        text = "out of memory";
        break;
    default:
        snprintf(msg, size, "not JSON: %s", detail);
        return;
    }
    snprintf(msg, size, "%s", text);
}

/* Copies text into the parser's buffer with ".0" after each integer beyond
 * 64 bits, so simdjson reads those as floats; returns the new length, or
 * 0 when out of memory. The text is valid JSON (the scanner said so). */
static size_t reparse_big_integers(entsync_json_parser *parser, const unsigned char *s, size_t len)
{
    size_t extra = 0;
    for (int pass = 0; pass < 2; pass++) {
        char *out = NULL;
        if (pass == 1 && !(out = entsync_json_buffer(parser, len + extra)))
            return 0;
        size_t o = 0;
        for (size_t i = 0; i < len;) {
            size_t from = i;
            if (s[i] == '"') {
                for (i++; s[i] != '"'; i++)
                    if (s[i] == '\\')
                        i++;
                i++;
            } else if (s[i] == '-' || is_digit(s[i])) {
                int integral = 1;
                while (i < len && is_number_byte(s[i])) {
                    if (!is_digit(s[i]) && s[i] != '-')
                        integral = 0;
                    i++;
                }
                if (integral && !fits_64_bits(s + from, i - from)) {
                    if (out) {
                        memcpy(out + o, s + from, i - from);
                        memcpy(out + o + (i - from), ".0", 2);
                    }
                    o += i - from + 2;
                    extra += pass == 0 ? 2 : 0;
                    continue;
                }
            } else {
                i++;
            }
            if (out)
                memcpy(out + o, s + from, i - from);
            o += i - from;
        }
    }
    return len + extra;
}

int entsync_json_parse_text(entsync_json_parser *parser, const char *text, size_t len, int padded,
                            const entsync_json_node **nodes, char *msg, size_t size)
{
    const char *detail = "";
    int status = ENTSYNC_JSON_NOMEM;
    if (padded) {
        status = entsync_json_parse_padded(parser, text, len, nodes, &detail);
    } else {
        char *buffer = entsync_json_buffer(parser, len);
        if (buffer) {
            memcpy(buffer, text, len);
            status = entsync_json_parse(parser, len, nodes, &detail);
        }
    }
    if (status == ENTSYNC_JSON_OK)
        return 1;
    scanner sc = {(const unsigned char *)text, len, 0, 0, msg, size};
    int explained = status != ENTSYNC_JSON_NOMEM && status != ENTSYNC_JSON_TOO_BIG &&
                    status != ENTSYNC_JSON_EMPTY && !scan_text(&sc);
    if (!explained && status == ENTSYNC_JSON_NUMBER && sc.big) {
        size_t grown = reparse_big_integers(parser, sc.s, len);
        status = grown ? entsync_json_parse(parser, grown, nodes, &detail) : ENTSYNC_JSON_NOMEM;
    }
    if (status == ENTSYNC_JSON_OK)
        return 1;
    if (!explained)
        status_message(status, detail, msg, size);
    entsync_json_release(parser);
    return 0;
}

/* Parses text; on success pushes its value and returns 1, else writes the
 * message and returns 0, pushing nothing. */
static int decode_text(lua_State *L, const char *text, size_t len, char *msg, size_t size)
{
    parser_box *box = lua_touserdata(L, UV_STATE);
    int own = box->busy;
    if (own)
        box = push_parser_box(L);
    if (!box->parser && !(box->parser = entsync_json_parser_new())) {
        if (own)
            lua_pop(L, 1);
        snprintf(msg, size, "out of memory");
        return 0;
    }
    const entsync_json_node *nodes = NULL;
    if (!entsync_json_parse_text(box->parser, text, len, 0, &nodes, msg, size)) {
        if (own)
            lua_pop(L, 1);
        return 0;
    }
    box->busy = 1;
    push_node(L, nodes);
    box->busy = 0;
    entsync_json_release(box->parser);
    if (own)
        lua_remove(L, -2);
    return 1;
}

/* decode(text) -> value, raising the message for a text that is not JSON;
 * try_decode(text) -> value | nil, message. */
static int decode_argument(lua_State *L, int raise)
{
    size_t len;
    luaL_checktype(L, 1, LUA_TSTRING);
    const char *text = lua_tolstring(L, 1, &len);
    char msg[MESSAGE_SIZE];
    if (decode_text(L, text, len, msg, sizeof msg))
        return 1;
    if (raise) {
        lua_pushstring(L, msg);
        return lua_error(L);
    }
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
}

static int json_decode(lua_State *L)
{
    return decode_argument(L, 1);
}

static int json_try_decode(lua_State *L)
{
    return decode_argument(L, 0);
}

/* === Encoding ========================================================== */

/* An object's member while its keys are sorted: a string key points into
 * the key itself (anchored on the Lua stack), an integer key's text lives
 * in the entry (number), found through key_text since qsort moves it. */
typedef struct member {
    const char *key;
    size_t len;
    char number[24];
    int value; /* the value's stack index */
} member;

/* One step of the path to the value being encoded, for messages. */
typedef struct step {
    const char *key; /* a string key, or NULL for index */
    size_t len;
    lua_Integer index; /* an array index or an integer key */
} step;

/* The output and the members of the objects being encoded, reused from
 * call to call (an upvalue of encode); busy as for the parser. */
typedef struct encoder {
    char *data;
    size_t len, cap;
    member *members;
    size_t used, members_cap;
    int busy, pretty;
    step path[MAX_DEPTH + 1];
} encoder;

static int encoder_gc(lua_State *L)
{
    encoder *e = luaL_checkudata(L, 1, ENCODER_META);
    free(e->data);
    free(e->members);
    e->data = NULL;
    e->members = NULL;
    e->len = e->cap = e->used = e->members_cap = 0;
    return 0;
}

static encoder *push_encoder(lua_State *L)
{
    return push_box(L, sizeof(encoder), ENCODER_META, encoder_gc);
}

/* The path of steps [0, depth) as ".a.b[2]", cut short when long. */
static void format_path(const encoder *e, int depth, char *out, size_t size)
{
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; i < depth && n + 1 < size; i++) {
        const step *s = &e->path[i];
        int plain = s->key != NULL && s->len > 0 && s->len <= 64;
        for (size_t k = 0; plain && k < s->len; k++) {
            unsigned char c = (unsigned char)s->key[k];
            plain = c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (k > 0 && is_digit(c));
        }
        int w;
        if (!s->key)
            w = snprintf(out + n, size - n, "[%lld]", (long long)s->index);
        else if (plain)
            w = snprintf(out + n, size - n, ".%.*s", (int)s->len, s->key);
        else
            w = snprintf(out + n, size - n, "[\"%.*s\"]", s->len > 40 ? 40 : (int)s->len, s->key);
        if (w < 0 || (size_t)w >= size - n) {
            snprintf(out + (size > 4 ? size - 4 : 0), size > 4 ? 4 : size, "...");
            return;
        }
        n += (size_t)w;
    }
}

/* Raises "<what> at <path><after>" (no " at <path>" at the top), leaving
 * the encoder free for the next call. */
static void encode_fail_after(lua_State *L, encoder *e, int depth, const char *after, const char *fmt, ...)
{
    char what[MESSAGE_SIZE], path[120];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    format_path(e, depth, path, sizeof path);
    e->busy = 0;
    e->len = 0;
    e->used = 0;
    luaL_error(L, "%s%s%s%s", what, path[0] ? " at " : "", path, after);
}

#define encode_fail(L, e, depth, ...) encode_fail_after(L, e, depth, "", __VA_ARGS__)

/* Invalid UTF-8 in a string or key: the path, then where in the text. */
static void encode_fail_utf8(lua_State *L, encoder *e, int depth, const char *what, size_t bad)
{
    char after[48];
    snprintf(after, sizeof after, " (its byte %zu)", bad);
    encode_fail_after(L, e, depth, after, "invalid UTF-8 in a %s", what);
}

static char *reserve(lua_State *L, encoder *e, size_t n)
{
    if (n > e->cap - e->len) {
        if (n > SIZE_MAX / 2 - e->len)
            encode_fail(L, e, 0, "out of memory");
        size_t cap = e->cap ? e->cap : 256;
        while (cap - e->len < n)
            cap *= 2;
        char *grown = realloc(e->data, cap);
        if (!grown)
            encode_fail(L, e, 0, "out of memory");
        e->data = grown;
        e->cap = cap;
    }
    return e->data + e->len;
}

static void put(lua_State *L, encoder *e, const char *s, size_t n)
{
    memcpy(reserve(L, e, n), s, n);
    e->len += n;
}

static void put_char(lua_State *L, encoder *e, char c)
{
    *reserve(L, e, 1) = c;
    e->len++;
}

/* The decimal text of n, ending at end; returns its start. */
static char *integer_text(char *end, long long n)
{
    unsigned long long u = n < 0 ? 0ULL - (unsigned long long)n : (unsigned long long)n;
    char *p = end;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (n < 0)
        *--p = '-';
    return p;
}

static void put_integer(lua_State *L, encoder *e, long long n)
{
    char text[24];
    char *start = integer_text(text + sizeof text, n);
    put(L, e, start, (size_t)(text + sizeof text - start));
}

/* A finite float as the shortest of %.15g, %.16g and %.17g that reads
 * back the same; an integral one below 2^53 as an integer's digits (JSON
 * has one number type), except -0, written "-0.0" so it stays a float. */
static void put_float(lua_State *L, encoder *e, int depth, double x)
{
    char text[40];
    if (!isfinite(x))
        encode_fail(L, e, depth, "cannot encode a non-finite number (%s)", isnan(x) ? "nan" : x > 0 ? "inf" : "-inf");
    if (x == 0 && signbit(x)) {
        put(L, e, "-0.0", 4);
        return;
    }
    if (x == floor(x) && fabs(x) < 9007199254740992.0) {
        put_integer(L, e, (long long)x);
        return;
    }
    int n = 0;
    for (int precision = 15; precision <= 17; precision++) {
        n = snprintf(text, sizeof text, "%.*g", precision, x);
        if (strtod(text, NULL) == x)
            break;
    }
    put(L, e, text, (size_t)n);
}

/* Writes s as a JSON string; returns the offset of invalid UTF-8 + 1, or
 * 0 when all went out. */
static size_t put_string(lua_State *L, encoder *e, const char *text, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)text;
    if (len > (SIZE_MAX / 2 - 2) / 6)
        encode_fail(L, e, 0, "out of memory");
    char *o = reserve(L, e, 6 * len + 2), *start = o;
    *o++ = '"';
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            *o++ = (char)c;
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t n = utf8_sequence(s + i, len - i);
            if (n == 0)
                return i + 1;
            memcpy(o, s + i, n);
            o += n;
            i += n;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"':
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            break;
        case '\b':
            *o++ = 'b';
            break;
        case '\f':
            *o++ = 'f';
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        default:
            memcpy(o, "u00", 3);
            o[3] = hex[c >> 4];
            o[4] = hex[c & 15];
            o += 5;
        }
        i++;
    }
    *o++ = '"';
    e->len += (size_t)(o - start);
    return 0;
}

static void put_newline(lua_State *L, encoder *e, int depth)
{
    if (!e->pretty)
        return;
    char *o = reserve(L, e, 1 + 2 * (size_t)depth);
    o[0] = '\n';
    memset(o + 1, ' ', 2 * (size_t)depth);
    e->len += 1 + 2 * (size_t)depth;
}

static const char *key_text(const member *m)
{
    return m->key ? m->key : m->number;
}

static int compare_members(const void *a, const void *b)
{
    const member *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(key_text(x), key_text(y), n);
    if (c != 0)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

static void encode_value(lua_State *L, encoder *e, int idx, int depth);

static void encode_array(lua_State *L, encoder *e, int idx, lua_Integer n, int depth)
{
    if (n == 0) {
        put(L, e, "[]", 2);
        return;
    }
    put_char(L, e, '[');
    for (lua_Integer i = 1; i <= n; i++) {
        if (i > 1)
            put_char(L, e, ',');
        put_newline(L, e, depth + 1);
        e->path[depth].key = NULL;
        e->path[depth].index = i;
        lua_rawgeti(L, idx, i); /* a hole is nil, written null */
        encode_value(L, e, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
    }
    put_newline(L, e, depth);
    put_char(L, e, ']');
}

/* Members are gathered on the Lua stack (each key and value stays there,
 * anchored, until the object is written), sorted by key text, written. */
static void encode_object(lua_State *L, encoder *e, int idx, int depth)
{
    int top = lua_gettop(L);
    size_t base = e->used;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        if (!lua_checkstack(L, 3))
            encode_fail(L, e, depth, "cannot encode an object this large");
        if (e->used == e->members_cap) {
            size_t cap = e->members_cap ? 2 * e->members_cap : 64;
            member *grown = realloc(e->members, cap * sizeof *grown);
            if (!grown)
                encode_fail(L, e, depth, "out of memory");
            e->members = grown;
            e->members_cap = cap;
        }
        member *m = &e->members[e->used];
        int type = lua_type(L, -2);
        if (type == LUA_TSTRING) {
            m->key = lua_tolstring(L, -2, &m->len);
        } else if (type == LUA_TNUMBER && lua_isinteger(L, -2)) {
            char *end = m->number + sizeof m->number - 1;
            *end = '\0';
            char *start = integer_text(end, (long long)lua_tointeger(L, -2));
            m->len = (size_t)(end - start);
            memmove(m->number, start, m->len + 1);
            m->key = NULL;
        } else if (type == LUA_TNUMBER) {
            encode_fail(L, e, depth, "cannot encode a float key (%.17g): keys must be strings or integers",
                        (double)lua_tonumber(L, -2));
        } else {
            encode_fail(L, e, depth, "cannot encode a %s key: keys must be strings or integers",
                        lua_typename(L, type));
        }
        m->value = lua_gettop(L);
        e->used++;
        lua_pushvalue(L, -2); /* the key again, for lua_next */
    }
    size_t count = e->used - base;
    if (count == 0) {
        e->used = base;
        put(L, e, "{}", 2);
        return;
    }
    qsort(e->members + base, count, sizeof *e->members, compare_members);
    put_char(L, e, '{');
    for (size_t i = 0; i < count; i++) {
        member *m = &e->members[base + i]; /* again after each value: the array moves */
        if (i > 0) {
            if (compare_members(m - 1, m) == 0)
                encode_fail(L, e, depth, "cannot encode the key \"%s\" twice (as a string and as an integer)",
                            key_text(m));
            put_char(L, e, ',');
        }
        put_newline(L, e, depth + 1);
        if (m->key) {
            e->path[depth].key = m->key;
            e->path[depth].len = m->len;
        } else {
            e->path[depth].key = NULL;
            e->path[depth].index = (lua_Integer)strtoll(m->number, NULL, 10);
        }
        size_t bad = put_string(L, e, key_text(m), m->len);
        if (bad)
            encode_fail_utf8(L, e, depth, "key", bad);
        if (e->pretty)
            put(L, e, ": ", 2);
        else
            put_char(L, e, ':');
        m = &e->members[base + i];
        encode_value(L, e, m->value, depth + 1);
    }
    put_newline(L, e, depth);
    put_char(L, e, '}');
    e->used = base;
    lua_settop(L, top);
}

/* Whether the unmarked table at idx is a sequence 1..n (n > 0). */
static int is_sequence(lua_State *L, int idx, lua_Integer n)
{
    lua_Integer count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > n) {
            lua_pop(L, 1);
            return 0;
        }
        count++;
    }
    return count == n;
}

static void encode_table(lua_State *L, encoder *e, int idx, int depth)
{
    if (depth >= MAX_DEPTH)
        encode_fail(L, e, depth, "cannot encode a value nested deeper than %d levels (a cycle?)", MAX_DEPTH);
    if (!lua_checkstack(L, 6))
        encode_fail(L, e, depth, "out of memory");
    int array = 0, object = 0;
    if (lua_getmetatable(L, idx)) {
        object = lua_rawequal(L, -1, UV_OBJECT);
        if (object)
            entsync_record_settle(L, idx); /* a record view, decoded whole first */
        array = lua_rawequal(L, -1, UV_ARRAY);
        lua_pop(L, 1);
    }
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    if (array) {
        encode_array(L, e, idx, n, depth);
    } else if (object) {
        encode_object(L, e, idx, depth);
    } else if (n == 0) {
        lua_pushnil(L);
        if (lua_next(L, idx) == 0) {
            put(L, e, "[]", 2); /* unmarked and empty: entsync's lists are mostly empty */
            return;
        }
        lua_pop(L, 2);
        encode_object(L, e, idx, depth);
    } else if (is_sequence(L, idx, n)) {
        encode_array(L, e, idx, n, depth);
    } else {
        encode_object(L, e, idx, depth);
    }
}

static void encode_value(lua_State *L, encoder *e, int idx, int depth)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        put(L, e, "null", 4);
        break;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) != NULL)
            encode_fail(L, e, depth, "cannot encode a light userdata other than json.null");
        put(L, e, "null", 4);
        break;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            put(L, e, "true", 4);
        else
            put(L, e, "false", 5);
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            put_integer(L, e, (long long)lua_tointeger(L, idx));
        else
            put_float(L, e, depth, (double)lua_tonumber(L, idx));
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        size_t bad = put_string(L, e, s, len);
        if (bad)
            encode_fail_utf8(L, e, depth, "string", bad);
        break;
    }
    case LUA_TTABLE:
        encode_table(L, e, idx, depth);
        break;
    default:
        encode_fail(L, e, depth, "cannot encode a %s", luaL_typename(L, idx));
    }
}

/* --- Encoding decoded nodes ------------------------------------------------ */

const entsync_json_node *entsync_json_node_after(const entsync_json_node *n)
{
    return n + (n->type == ENTSYNC_JSON_ARRAY || n->type == ENTSYNC_JSON_OBJECT ? n->as.nodes : 1);
}

const entsync_json_node *entsync_json_object_get(const entsync_json_node *obj, const char *key, size_t len)
{
    const entsync_json_node *n = obj + 1, *found = NULL;
    for (size_t i = 0; i < obj->len; i++) {
        if (n->len == len && memcmp(n->as.string, key, len) == 0)
            found = n + 1;
        n = entsync_json_node_after(n + 1);
    }
    return found;
}

const entsync_json_node *entsync_json_array_item(const entsync_json_node *arr, long long k)
{
    if (k < 1 || (unsigned long long)k > arr->len)
        return NULL;
    const entsync_json_node *item = arr + 1;
    for (long long j = 1; j < k; j++)
        item = entsync_json_node_after(item);
    return item;
}

typedef struct placed_member {
    entsync_json_member m;
    size_t pos;
} placed_member;

static int compare_placed(const void *a, const void *b)
{
    const placed_member *x = a, *y = b;
    size_t n = x->m.len < y->m.len ? x->m.len : y->m.len;
    int c = memcmp(x->m.key, y->m.key, n);
    if (c)
        return c;
    if (x->m.len != y->m.len)
        return x->m.len < y->m.len ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

long entsync_json_sorted_members(const entsync_json_node *obj, entsync_json_member **members)
{
    size_t count = obj->len;
    placed_member *placed = malloc((count ? count : 1) * sizeof *placed);
    if (!placed)
        return -1;
    const entsync_json_node *n = obj + 1;
    for (size_t i = 0; i < count; i++) {
        placed[i].m.key = n->as.string;
        placed[i].m.len = n->len;
        placed[i].m.value = n + 1;
        placed[i].pos = i;
        n = entsync_json_node_after(n + 1);
    }
    qsort(placed, count, sizeof *placed, compare_placed);
    entsync_json_member *out = (entsync_json_member *)placed; /* compacted in place: m is first */
    size_t kept = 0;
    for (size_t i = 0; i < count; i++) {
        int last = i + 1 == count || placed[i + 1].m.len != placed[i].m.len ||
                   memcmp(placed[i + 1].m.key, placed[i].m.key, placed[i].m.len) != 0;
        if (last)
            out[kept++] = placed[i].m; /* a repeated key: its last value, as decoding keeps */
    }
    *members = out;
    return (long)kept;
}

/* Writes the value at n as encode writes its decoded value (compact). */
static void encode_node(lua_State *L, encoder *e, const entsync_json_node *n, int depth)
{
    switch (n->type) {
    case ENTSYNC_JSON_NULL:
        put(L, e, "null", 4);
        return;
    case ENTSYNC_JSON_FALSE:
        put(L, e, "false", 5);
        return;
    case ENTSYNC_JSON_TRUE:
        put(L, e, "true", 4);
        return;
    case ENTSYNC_JSON_INTEGER:
        put_integer(L, e, n->as.integer);
        return;
    case ENTSYNC_JSON_FLOAT:
        put_float(L, e, depth, n->as.number);
        return;
    case ENTSYNC_JSON_STRING:
        if (put_string(L, e, n->as.string, n->len))
            encode_fail_utf8(L, e, depth, "string", 0);
        return;
    case ENTSYNC_JSON_ARRAY: {
        put_char(L, e, '[');
        const entsync_json_node *item = n + 1;
        for (size_t i = 0; i < n->len; i++) {
            if (i)
                put_char(L, e, ',');
            encode_node(L, e, item, depth + 1);
            item = entsync_json_node_after(item);
        }
        put_char(L, e, ']');
        return;
    }
    default: {
        entsync_json_member *members;
        long count = entsync_json_sorted_members(n, &members);
        if (count < 0)
            encode_fail(L, e, depth, "out of memory");
        put_char(L, e, '{');
        for (long i = 0; i < count; i++) {
            if (i)
                put_char(L, e, ',');
            put_string(L, e, members[i].key, members[i].len);
            put_char(L, e, ':');
            encode_node(L, e, members[i].value, depth + 1); /* nodes nest at most MAX_DEPTH */
        }
        free(members);
        put_char(L, e, '}');
    }
    }
}

struct entsync_json_encoder {
    encoder e;
};

entsync_json_encoder *entsync_json_encoder_new(void)
{
    return calloc(1, sizeof(entsync_json_encoder));
}

void entsync_json_encoder_free(entsync_json_encoder *enc)
{
    if (!enc)
        return;
    free(enc->e.data);
    free(enc->e.members);
    free(enc);
}

const char *entsync_json_encode_node(lua_State *L, entsync_json_encoder *enc, const entsync_json_node *n, size_t *len)
{
    enc->e.len = 0;
    enc->e.used = 0;
    enc->e.pretty = 0;
    encode_node(L, &enc->e, n, 0);
    *len = enc->e.len;
    return enc->e.data ? enc->e.data : "";
}

/* encode(value [, { pretty = true }]) -> text */
static int json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    int pretty = 0;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "pretty");
        pretty = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    lua_settop(L, 1);
    encoder *e = lua_touserdata(L, UV_STATE);
    if (e->busy)
        e = push_encoder(L); /* a finalizer encoding inside an encode */
    e->len = 0;
    e->used = 0;
    e->pretty = pretty;
    e->busy = 1;
    encode_value(L, e, 1, 0);
    e->busy = 0;
    lua_pushlstring(L, e->data ? e->data : "", e->len);
    if (e->cap > KEEP_BYTES) {
        free(e->data);
        e->data = NULL;
        e->len = e->cap = 0;
    }
    if (e->members_cap > KEEP_KEYS) {
        free(e->members);
        e->members = NULL;
        e->members_cap = 0;
    }
    return 1;
}

/* === Marks ============================================================= */

/* array([t]) / object([t]) -> t with the mark set (a new table when t is
 * not given). A table with a metatable of its own is refused: the mark
 * would replace it. */
static int set_mark(lua_State *L, int mark)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);
    }
    if (lua_getmetatable(L, 1)) {
        int ours = lua_rawequal(L, -1, UV_OBJECT) || lua_rawequal(L, -1, UV_ARRAY);
        lua_pop(L, 1);
        if (!ours)
            return luaL_error(L, "json.%s: the table has a metatable of its own",
                              mark == UV_ARRAY ? "array" : "object");
    }
    lua_pushvalue(L, mark);
    lua_setmetatable(L, 1);
    return 1;
}

static int json_array(lua_State *L)
{
    return set_mark(L, UV_ARRAY);
}

static int json_object(lua_State *L)
{
    return set_mark(L, UV_OBJECT);
}

static int has_mark(lua_State *L, int mark)
{
    int yes = 0;
    if (lua_type(L, 1) == LUA_TTABLE && lua_getmetatable(L, 1)) {
        yes = lua_rawequal(L, -1, mark);
        lua_pop(L, 1);
    }
    lua_pushboolean(L, yes);
    return 1;
}

static int json_is_array(lua_State *L)
{
    return has_mark(L, UV_ARRAY);
}

static int json_is_object(lua_State *L)
{
    return has_mark(L, UV_OBJECT);
}

/* === Registration ====================================================== */

/* Sets the functions of list on the table below the upvalue state, with
 * the upvalues state, object_mt and array_mt. The state is on top. */
static void set_functions(lua_State *L, const luaL_Reg *list)
{
    for (; list->name; list++) {
        lua_pushvalue(L, -1);
        lua_getfield(L, LUA_REGISTRYINDEX, OBJECT_MT);
        lua_getfield(L, LUA_REGISTRYINDEX, ARRAY_MT);
        lua_pushcclosure(L, list->func, 3);
        lua_setfield(L, -3, list->name);
    }
}

/* text_ok(s) -> true, or false, the 1-based offset of the first byte that
 * is not valid UTF-8 or is a NUL, and "utf8" or "nul": what a text column
 * takes (JSON strings, SQLite text read by other programs). */
size_t entsync_json_text_bad(const char *text, size_t len)
{
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        if (s[i] >= 0x01 && s[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = s[i] == 0 ? 0 : utf8_sequence(s + i, len - i);
        if (n == 0)
            return i + 1;
        i += n;
    }
    return 0;
}

static int json_text_ok(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    size_t bad = entsync_json_text_bad(s, len);
    if (bad) {
        lua_pushboolean(L, 0);
        lua_pushinteger(L, (lua_Integer)bad);
        lua_pushstring(L, s[bad - 1] == 0 ? "nul" : "utf8");
        return 3;
    }
    lua_pushboolean(L, 1);
    return 1;
}

void entsync_json_register(lua_State *L)
{
    static const luaL_Reg decoding[] = {
        {"decode", json_decode},
        {"try_decode", json_try_decode},
        {NULL, NULL},
    };
    static const luaL_Reg encoding[] = {
        {"encode", json_encode},
        {NULL, NULL},
    };
    static const luaL_Reg marks[] = {
        {"array", json_array},
        {"object", json_object},
        {"is_array", json_is_array},
        {"is_object", json_is_object},
        {NULL, NULL},
    };
    push_mark(L, OBJECT_MT);
    push_mark(L, ARRAY_MT);
    lua_createtable(L, 0, 13);
    lua_rotate(L, -3, 1); /* json, object_mt, array_mt */
    lua_setfield(L, -3, "array_mt");
    lua_setfield(L, -2, "object_mt");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    lua_pushcfunction(L, json_text_ok);
    lua_setfield(L, -2, "text_ok");
    push_parser_box(L);
    set_functions(L, decoding);
    lua_pop(L, 1);
    push_encoder(L);
    set_functions(L, encoding);
    lua_pop(L, 1);
    lua_pushnil(L); /* the marks have no state */
    set_functions(L, marks);
    lua_pop(L, 1);
    entsync_document_register(L);
    lua_setfield(L, -2, "json");
}

/*
 * json_simd: simdjson's DOM parser behind the C interface of json_simd.h.
 *
 * Built with -fno-exceptions (simdjson then reports every failure as an
 * error code) and allocating only with malloc and nothrow new, so no C++
 * exception can reach the C code that calls in. The parsed DOM is walked
 * once into a flat array of nodes that C reads without calling back here.
 */
#include "json_simd.h"

#include <simdjson.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

/* Documents up to this size keep their buffers between parses; a larger
 * one's are given back by entsync_json_release. */
static const size_t KEEP_BYTES = 1 << 20;
static const size_t KEEP_NODES = 1 << 16;
static const size_t FIRST_NODES = 256;

struct entsync_json_parser {
    simdjson::dom::parser dom;
    bool dom_ready = false;
    char *buffer = nullptr;
    size_t buffer_cap = 0; /* bytes before the padding */
    entsync_json_node *nodes = nullptr;
    size_t count = 0, cap = 0;
};

namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

int status_of(simdjson::error_code code)
{
    switch (code) {
    case simdjson::SUCCESS:
        return ENTSYNC_JSON_OK;
    case simdjson::EMPTY:
        return ENTSYNC_JSON_EMPTY;
    case simdjson::TAPE_ERROR:
    case simdjson::INCOMPLETE_ARRAY_OR_OBJECT:
    case simdjson::TRAILING_CONTENT:
        return ENTSYNC_JSON_SYNTAX;
    case simdjson::T_ATOM_ERROR:
    case simdjson::F_ATOM_ERROR:
    case simdjson::N_ATOM_ERROR:
        return ENTSYNC_JSON_LITERAL;
    case simdjson::NUMBER_ERROR:
    case simdjson::NUMBER_OUT_OF_RANGE:
        return ENTSYNC_JSON_NUMBER;
    case simdjson::STRING_ERROR:
        return ENTSYNC_JSON_ESCAPE;
    case simdjson::UNCLOSED_STRING:
        return ENTSYNC_JSON_UNCLOSED;
    case simdjson::UNESCAPED_CHARS:
        return ENTSYNC_JSON_CONTROL;
    case simdjson::UTF8_ERROR:
        return ENTSYNC_JSON_UTF8;
    case simdjson::DEPTH_ERROR:
        return ENTSYNC_JSON_DEPTH;
    case simdjson::CAPACITY:
        return ENTSYNC_JSON_TOO_BIG;
    case simdjson::MEMALLOC:
        return ENTSYNC_JSON_NOMEM;
    default:
        return ENTSYNC_JSON_OTHER;
    }
}

entsync_json_node *push(entsync_json_parser *p)
{
    if (p->count == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : FIRST_NODES;
        void *grown = std::realloc(p->nodes, cap * sizeof *p->nodes);
        if (!grown)
            return nullptr;
        p->nodes = static_cast<entsync_json_node *>(grown);
        p->cap = cap;
    }
    return &p->nodes[p->count++];
}

/* Appends the nodes of e, which sits inside `depth` containers. */
int emit(entsync_json_parser *p, element e, int depth)
{
    entsync_json_node *n = push(p);
    if (!n)
        return ENTSYNC_JSON_NOMEM;
    n->len = 0;
    switch (e.type()) {
    case element_type::ARRAY: {
        if (depth >= ENTSYNC_JSON_MAX_DEPTH)
            return ENTSYNC_JSON_DEPTH;
        n->type = ENTSYNC_JSON_ARRAY;
        size_t at = p->count - 1; /* n moves when the array grows */
        simdjson::dom::array items;
        if (e.get_array().get(items) != simdjson::SUCCESS)
            return ENTSYNC_JSON_OTHER;
        for (element item : items) {
            int status = emit(p, item, depth + 1);
            if (status != ENTSYNC_JSON_OK)
                return status;
            p->nodes[at].len++;
        }
        p->nodes[at].as.nodes = p->count - at;
        break;
    }
    case element_type::OBJECT: {
        if (depth >= ENTSYNC_JSON_MAX_DEPTH)
            return ENTSYNC_JSON_DEPTH;
        n->type = ENTSYNC_JSON_OBJECT;
        size_t at = p->count - 1;
        simdjson::dom::object members;
        if (e.get_object().get(members) != simdjson::SUCCESS)
            return ENTSYNC_JSON_OTHER;
        for (simdjson::dom::key_value_pair member : members) {
            entsync_json_node *key = push(p);
            if (!key)
                return ENTSYNC_JSON_NOMEM;
            key->type = ENTSYNC_JSON_STRING;
            key->len = member.key.size();
            key->as.string = member.key.data();
            int status = emit(p, member.value, depth + 1);
            if (status != ENTSYNC_JSON_OK)
                return status;
            p->nodes[at].len++;
        }
        p->nodes[at].as.nodes = p->count - at;
        break;
    }
    case element_type::STRING: {
        std::string_view s = e.get_string().value_unsafe();
        n->type = ENTSYNC_JSON_STRING;
        n->len = s.size();
        n->as.string = s.data();
        break;
    }
    case element_type::INT64:
        n->type = ENTSYNC_JSON_INTEGER;
        n->as.integer = e.get_int64().value_unsafe();
        break;
    case element_type::UINT64: /* only those above INT64_MAX are typed so */
        n->type = ENTSYNC_JSON_FLOAT;
        n->as.number = static_cast<double>(e.get_uint64().value_unsafe());
        break;
    case element_type::DOUBLE:
        n->type = ENTSYNC_JSON_FLOAT;
        n->as.number = e.get_double().value_unsafe();
        break;
    case element_type::BOOL:
        n->type = e.get_bool().value_unsafe() ? ENTSYNC_JSON_TRUE : ENTSYNC_JSON_FALSE;
        break;
    case element_type::NULL_VALUE:
    default:
        n->type = ENTSYNC_JSON_NULL;
        break;
    }
    return ENTSYNC_JSON_OK;
}

} // namespace

extern "C" {

entsync_json_parser *entsync_json_parser_new(void)
{
    return new (std::nothrow) entsync_json_parser();
}

void entsync_json_parser_free(entsync_json_parser *parser)
{
    if (!parser)
        return;
    std::free(parser->buffer);
    std::free(parser->nodes);
    delete parser;
}

char *entsync_json_buffer(entsync_json_parser *p, size_t len)
{
    if (len > SIZE_MAX - simdjson::SIMDJSON_PADDING)
        return nullptr;
    if (!p->buffer || p->buffer_cap < len) {
        size_t cap = len < 4096 ? 4096 : len;
        std::free(p->buffer);
        p->buffer = static_cast<char *>(std::malloc(cap + simdjson::SIMDJSON_PADDING));
        p->buffer_cap = p->buffer ? cap : 0;
    }
    return p->buffer;
}

static_assert(ENTSYNC_JSON_PADDING >= simdjson::SIMDJSON_PADDING, "a padded text has simdjson's padding");

/* Parses len bytes at text, which simdjson's padding follows. */
static int parse_at(entsync_json_parser *p, const char *text, size_t len, const entsync_json_node **nodes,
                    const char **detail)
{
    size_t want = len < 4096 ? 4096 : len;
    if (!p->dom_ready || p->dom.capacity() < want || p->dom.doc.capacity() < want) {
        /* Grown by doubling, parser and document together (simdjson would
         * grow each to the exact size of every larger document). simdjson
         * counts the document as one level and stops a level early for
         * non-empty containers; emit() applies the exact limit. */
        size_t cap = 4096;
        while (cap < want && cap <= SIZE_MAX / 2)
            cap *= 2;
        if (cap > p->dom.max_capacity())
            cap = want;
        p->dom_ready = false;
        simdjson::error_code code = p->dom.allocate(cap, ENTSYNC_JSON_MAX_DEPTH + 2);
        if (code == simdjson::SUCCESS)
            code = p->dom.doc.allocate(cap);
        if (code != simdjson::SUCCESS) {
            p->dom = simdjson::dom::parser();
            *detail = simdjson::error_message(code);
            return status_of(code);
        }
        p->dom_ready = true;
    }
    element root;
    simdjson::error_code code = p->dom.parse(text, len, false).get(root);
    if (code != simdjson::SUCCESS) {
        *detail = simdjson::error_message(code);
        return status_of(code);
    }
    p->count = 0;
    int status = emit(p, root, 0);
    if (status != ENTSYNC_JSON_OK) {
        *detail = status == ENTSYNC_JSON_DEPTH ? "too deep" : "out of memory";
        return status;
    }
    *nodes = p->nodes;
    return ENTSYNC_JSON_OK;
}

int entsync_json_parse(entsync_json_parser *p, size_t len, const entsync_json_node **nodes, const char **detail)
{
    *detail = "";
    if (!p->buffer || p->buffer_cap < len) {
        *detail = "no input buffer";
        return ENTSYNC_JSON_OTHER;
    }
    /* The padding is read, never used: zeroed, it is never uninitialised. */
    std::memset(p->buffer + len, 0, simdjson::SIMDJSON_PADDING);
    return parse_at(p, p->buffer, len, nodes, detail);
}

int entsync_json_parse_padded(entsync_json_parser *p, const char *text, size_t len, const entsync_json_node **nodes,
                              const char **detail)
{
    *detail = "";
    return parse_at(p, text, len, nodes, detail);
}

void entsync_json_release(entsync_json_parser *p)
{
    if (p->buffer_cap > KEEP_BYTES) {
        std::free(p->buffer);
        p->buffer = nullptr;
        p->buffer_cap = 0;
    }
    if (p->cap > KEEP_NODES) {
        std::free(p->nodes);
        p->nodes = nullptr;
        p->cap = p->count = 0;
    }
    if (p->dom_ready && p->dom.capacity() > KEEP_BYTES) {
        p->dom = simdjson::dom::parser(); /* frees the grown buffers */
        p->dom_ready = false;
    }
}

} // extern "C"

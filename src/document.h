/*
 * document: a JSON text parsed once and kept as simdjson's nodes, for the
 * questions a reader of pages asks of it: json.document() in entsync.core.
 *
 * A page of an HTTP listing holds the records and the fields that say
 * where the list goes on (a total, a cursor, the next URL). http_json
 * parses each page into its reader's document, reads those fields, and the
 * C record path (record.h) maps the records straight from the nodes: no
 * Lua value is made of a record it takes. The Lua pipeline still gets the
 * page decoded (json.decode) when it reads a record itself.
 *
 * A document is reused page after page: load parses the next text into
 * the same parser, and what the last one held is gone. Paths read as
 * http_json's dig reads a decoded value: dot-separated steps, a step that
 * is a number (1-based) reads an array, any other step an object; "" or
 * nil is the whole document.
 *
 * Methods:
 *   load(text) -> true | nil, message   json.decode's message for a text that
 *                                       is not JSON (the document is then empty);
 *                                       text may be an HTTP response's payload
 *                                       (http.h), its body read in place
 *   get(path) -> value                  the value at path, decoded (nil: none)
 *   select(path) -> kind, n | nil       makes the value at path the document's
 *                                       records; kind is "array", "object",
 *                                       "string", "number", "boolean" or
 *                                       "null", n the items of an array (the
 *                                       records) or the members of an object;
 *                                       nil when nothing is there (no records)
 *   item(i [, key]) -> value            record i decoded, or its member key
 *                                       (nil when absent or not an object)
 *   objects(from, to) -> last           the last j in from..to such that
 *                                       records from..j are all objects
 *                                       (from - 1 when record from is not)
 *   list() -> list                      the records decoded, as json.decode
 *                                       gives them (an empty list when the
 *                                       records are not an array)
 * Misuse (an index beyond the records, no document loaded) raises.
 */
#ifndef ENTSYNC_DOCUMENT_H
#define ENTSYNC_DOCUMENT_H

#include "json_simd.h"

#include <lua.h>

typedef struct entsync_document entsync_document;

/* The document at idx, or NULL when the value there is not one. */
entsync_document *entsync_document_test(lua_State *L, int idx);

/* How many records the document's selection holds. */
size_t entsync_document_count(const entsync_document *d);

/* The nodes of record i of d, 1 <= i <= its count (the caller checks),
 * valid until its next load. Records read in order cost one step each. */
const entsync_json_node *entsync_document_record(entsync_document *d, size_t i);

/* Sets document in the table json, on top of the stack. */
void entsync_document_register(lua_State *L);

#endif

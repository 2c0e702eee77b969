/*
 * record: the C record path of imports, the sub-table record of
 * entsync.core.
 *
 * A program is one sync's mapping compiled for C (lua/entsync/record_path.lua
 * builds it from the compiled mapping, once a run). For each line of an
 * NDJSON input, and each record of a page a reader loaded (an http_json
 * page, as a core.json.document whose nodes it maps without a Lua value
 * made, or a Lua list a reader decoded itself), it reads the remote id and the changed mark, checks the cursor,
 * looks the id up in the id map, maps every field (its path, the user's
 * import callback, the default, required, the coercion to the declared
 * type), takes the content hash over the mapped entities with exactly
 * core.hash's canonical encoding, and keeps what the write needs in an
 * arena of the batch. The batch's write phase then binds and writes the
 * rows (the writers' own statements; creates in runs of 64, 16 and 4 rows a
 * statement) and the id-map rows (the ledger's SQL) with no Lua value made.
 *
 * Lua runs only where the user wrote Lua: an import callback gets a line's
 * record as a view, a table with json.object_mt whose top-level fields are
 * decoded when first read (the mark's __index and __pairs, set here); a view
 * still referenced after its record is done keeps the line's text, and is
 * decoded whole at its next use. A record the program cannot take exactly
 * as the Lua pipeline would (bad JSON, no usable id, a value that needs a
 * coercion done only in Lua, a callback that raises, ...) is handed back:
 * undecoded, or, once callbacks ran for it, as they left it with their
 * outcomes (held), so that none runs twice. The program never decides a
 * failure.
 *
 * Methods: take(file, known, max, max_line, cursor_mark, cursor_id,
 * failing), take_records(document | list, from, to, cursor_mark, cursor_id, failing,
 * ordered, max_mark, max_id), held() -> record, results, errors, max() ->
 * mark, id, count(), entry(i [, handed]) -> line, raw_hash | nil, nil,
 * src, write(from, to, pass, now) -> created, updated, queue(from, to,
 * pass, now) -> created, updated, hand_off([after_sql, ...]), settle() ->
 * true | false, error | nil, and reset(); functions program(spec) and
 * held_nil().
 *
 * The write phase needs no Lua state. write runs it at once; queue keeps
 * the entries for hand_off, which gives the transaction in progress to
 * the store's writer thread (store.h) with the batch's buffers, so that
 * the next batch is taken into the other pair while this one is written
 * and committed; settle waits for it and gives its outcome.
 */
#ifndef ENTSYNC_RECORD_H
#define ENTSYNC_RECORD_H

#include <lua.h>

/* Decodes every field a record view at idx has not decoded yet, so that
 * raw iteration (lua_next) sees the whole record: json.c's encoder and
 * hash.c's canonical encoding call it on every table they walk. Nothing
 * for any other table. */
void entsync_record_settle(lua_State *L, int idx);

/* Sets the sub-table record of the table on top of the stack, and the
 * __index and __pairs of json.object_mt that views need. */
void entsync_record_register(lua_State *L);

#endif

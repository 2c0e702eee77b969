/*
 * hash: a 64-bit content hash of a Lua value over a canonical encoding, so
 * the same mapped entity hashes the same in every run, process and machine.
 *
 * Encoding: nil and JSON null "n"; booleans "t"/"f"; numbers with an
 * integral value (1 and 1.0 alike) "i<digits>;", other numbers
 * "d<%.17g>;"; strings "s<len>:<bytes>"; tables that are sequences
 * "a<n>:" then their items; other tables "o<n>:" then key/value pairs,
 * string keys first (encoded as strings) in bytewise order, then number
 * keys (encoded as numbers) in bytewise order of their text. The hash is FNV-1a 64 of
 * those bytes: simple, documented and stable, which matters more here
 * than speed (records are a few hundred bytes).
 */
#ifndef ENTSYNC_HASH_H
#define ENTSYNC_HASH_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

uint64_t entsync_hash_bytes(const void *data, size_t len);

/* Room for entsync_hash_tagged's text. */
#define ENTSYNC_HASH_TAGGED 32

/* The canonical encoding's piece for n: an optional tag, n's decimal
 * digits, an optional end (0: none), written to the end of text; returns
 * where it starts, its length in *len. The C record path encodes with it
 * what core.hash encodes. */
const char *entsync_hash_tagged(char text[ENTSYNC_HASH_TAGGED], char tag, long long n, char end, size_t *len);

/* FNV-1a 64 continued from a previous hash (seed), so a hash can cover a
 * fingerprint and then the bytes of a record. */
uint64_t entsync_hash_continue(uint64_t seed, const void *data, size_t len);

/* entsync_hash_bytes of a and of b, into *ha and *hb, the two hashed side
 * by side: each byte's multiply waits for the one before, so two
 * independent hashes run in about the time of one. */
void entsync_hash_pair(const void *a, size_t alen, const void *b, size_t blen, uint64_t *ha, uint64_t *hb);

/* The hash of a raw input line (XXH3 64, seeded with the sync's
 * fingerprint): what a re-import recognises a line by without decoding
 * it. Not the canonical hash, so it may change between entsync versions
 * (the fingerprint, which covers the version, changes with it). */
uint64_t entsync_hash_line(uint64_t seed, const void *data, size_t len);

/* A set of 64-bit hashes (open addressing), given to Lua as a userdata. */
typedef struct entsync_hashset entsync_hashset;

/* Pushes a new empty set; returns it. */
entsync_hashset *entsync_hashset_push(lua_State *L);

/* The set at idx, or a Lua error when it is not one. */
entsync_hashset *entsync_hashset_check(lua_State *L, int idx);

/* Whether the set holds hash. */
int entsync_hashset_has(const entsync_hashset *set, uint64_t hash);

/* Adds a hash; raises a Lua error when out of memory. */
void entsync_hashset_add(lua_State *L, entsync_hashset *set, uint64_t hash);

/* Sets the sub-table hash of the table on top of the stack: of(value) ->
 * integer, hex(value) -> string, canonical(value) -> string, line(text
 * [, seed]) -> integer (entsync_hash_line), set() -> set (with add, has and count),
 * integerize(table) and skip_known(file, set, seed, max). */
void entsync_hash_register(lua_State *L);

#endif

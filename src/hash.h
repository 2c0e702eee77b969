/*
 * hash: a 64-bit content hash of a Lua value over a canonical encoding, so
 * the same mapped entity hashes the same in every run, process and machine.
 *
 * Encoding: nil and JSON null "n"; booleans "t"/"f"; numbers with an
 * integral value (1 and 1.0 alike) "i<digits>;", other numbers
 * "d<%.17g>;"; strings "s<len>:<bytes>"; tables that are sequences
 * "a<n>:" then their items; other tables "o<n>:" then key/value pairs in
 * bytewise order of the keys' canonical strings. The hash is FNV-1a 64 of
 * those bytes: simple, documented and stable, which matters more here
 * than speed (records are a few hundred bytes).
 */
#ifndef ENTSYNC_HASH_H
#define ENTSYNC_HASH_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

uint64_t entsync_hash_bytes(const void *data, size_t len);

/* Registers hash(value) -> integer, hash_hex(value) -> string and
 * canonical(value) -> string into the table on top of the stack. */
void entsync_hash_register(lua_State *L);

#endif

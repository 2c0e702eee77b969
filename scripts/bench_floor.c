/*
 * bench_floor: the C floor scripts/bench compares entsync with.
 *
 *   bench_floor DATA.ndjson STORE.db [BATCH]
 *
 * Reads the NDJSON file line by line and upserts each raw line into one
 * SQLite table, raw(id INTEGER PRIMARY KEY, line TEXT), with one prepared
 * statement, in transactions of BATCH (5000) lines, WAL mode and
 * synchronous=NORMAL as entsync's store uses. No JSON parsing: the key is
 * the integer after the first "id": in the line (a cheap scan; the bench's
 * records start with it), or the line number when there is none. So this is
 * the least any importer of this file into SQLite has to do: read the bytes,
 * write them once, commit.
 *
 * Prints "N lines" on stdout; exits non-zero on any error.
 */
#define _GNU_SOURCE
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(sqlite3 *db, const char *what)
{
    fprintf(stderr, "bench_floor: %s: %s\n", what, db ? sqlite3_errmsg(db) : "error");
    exit(1);
}

static void exec(sqlite3 *db, const char *sql)
{
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        die(db, sql);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_floor DATA.ndjson STORE.db [BATCH]\n");
        return 2;
    }
    long batch = argc > 3 ? strtol(argv[3], NULL, 10) : 5000;
    if (batch < 1)
        batch = 5000;
    FILE *in = fopen(argv[1], "rb");
    if (!in) {
        perror(argv[1]);
        return 1;
    }
    sqlite3 *db = NULL;
    if (sqlite3_open(argv[2], &db) != SQLITE_OK)
        die(db, "open");
    exec(db, "PRAGMA journal_mode=WAL");
    exec(db, "PRAGMA synchronous=NORMAL");
    exec(db, "CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, line TEXT NOT NULL)");
    sqlite3_stmt *upsert = NULL;
    if (sqlite3_prepare_v2(db,
            "INSERT INTO raw (id, line) VALUES (?1, ?2) "
            "ON CONFLICT (id) DO UPDATE SET line = excluded.line",
            -1, &upsert, NULL) != SQLITE_OK)
        die(db, "prepare");

    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long long line_no = 0, stored = 0;
    long in_batch = 0;
    exec(db, "BEGIN");
    while ((len = getline(&line, &cap, in)) != -1) {
        line_no++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        long long id = line_no;
        const char *key = strstr(line, "\"id\":");
        if (key) {
            char *end;
            long long parsed = strtoll(key + 5, &end, 10);
            if (end != key + 5)
                id = parsed;
        }
        sqlite3_bind_int64(upsert, 1, id);
        sqlite3_bind_text(upsert, 2, line, (int)len, SQLITE_STATIC);
        if (sqlite3_step(upsert) != SQLITE_DONE)
            die(db, "upsert");
        sqlite3_reset(upsert);
        stored++;
        if (++in_batch == batch) {
            exec(db, "COMMIT");
            exec(db, "BEGIN");
            in_batch = 0;
        }
    }
    exec(db, "COMMIT");
    if (ferror(in)) {
        perror(argv[1]);
        return 1;
    }
    fclose(in);
    free(line);
    sqlite3_finalize(upsert);
    if (sqlite3_close(db) != SQLITE_OK)
        die(db, "close");
    printf("%lld lines\n", stored);
    return 0;
}

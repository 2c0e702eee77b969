/*
 * bench_floor: the C floors scripts/bench compares entsync with.
 *
 *   bench_floor DATA.ndjson STORE.db [BATCH]
 *   bench_floor --store DATA.ndjson STORE.db [BATCH]
 *
 * Both read the NDJSON file line by line and write in transactions of BATCH
 * (5000) lines, WAL mode and synchronous=NORMAL as entsync's store uses. No
 * JSON parsing: the key is the integer after the first "id": in the line (a
 * cheap scan; the bench's records start with it), or the line number when
 * there is none.
 *
 * The raw floor upserts each line into one table, raw(id INTEGER PRIMARY
 * KEY, line TEXT), with one prepared statement: the least any importer of
 * this file into SQLite has to do (read the bytes, write them once, commit).
 *
 * The store floor (--store) writes, into an empty entsync store made by the
 * bench job, the rows entsync writes for one record of that job's first
 * import, with the statements entsync uses: a "user" row, a "profile" row
 * linked to it and the record's id-map row (a first import has no id map
 * to look up). As the C record path does, runs of ROWS records go with one
 * INSERT OR FAIL a table, the users with no id of their own (the table
 * gives each the largest plus one) and the id-map rows with no key when
 * the largest is the row before theirs (each then gets the next), keyed
 * otherwise; the rest of a transaction, one statement a row.
 * Values are slices of the line of about the real values' sizes, so
 * nothing is decoded, mapped or hashed: it is what the store's own rows
 * cost, a ceiling for any importer keeping entsync's id map, however fast
 * its reading, mapping and hashing. It opens the store as src/store.c
 * does (SQLite's allocation statistics off, a connection without its
 * own mutex, temp_store=MEMORY, a 16 MiB page cache, statements prepared
 * persistent); the raw floor keeps SQLite's defaults.
 *
 * Prints "N lines" on stdout; exits non-zero on any error.
 */
#define _GNU_SOURCE
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { STMT_UPSERT_RAW, STMT_USER, STMT_PROFILE, STMT_IDMAP, STMT_USER_ROWS, STMT_PROFILE_ROWS, STMT_IDMAP_ROWS,
       STMT_IDMAP_NEXT_ROWS, STMT_COUNT };
enum { ROWS = 64 }; /* records a statement, as src/record.c writes creates */

/* A record waiting for its run of ROWS. */
typedef struct pending {
    char *line;
    size_t len;
    long long id;
} pending;

typedef struct floor_db {
    sqlite3 *db;
    sqlite3_stmt *stmt[STMT_COUNT];
    pending run[ROWS];
    int held;                  /* records in run */
    sqlite3_int64 next_user;   /* the id the user table gives its next row */
    sqlite3_int64 last_key;    /* the id map's largest key */
} floor_db;

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

static sqlite3_stmt *prepare(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *stmt = NULL;
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL) != SQLITE_OK)
        die(db, sql);
    return stmt;
}

static void step_done(sqlite3 *db, sqlite3_stmt *stmt, const char *what)
{
    if (sqlite3_step(stmt) != SQLITE_DONE)
        die(db, what);
    sqlite3_reset(stmt);
}

/* A slice of the line standing in for a mapped value of about that size. */
static void bind_slice(sqlite3_stmt *stmt, int index, const char *line, size_t len, size_t at, size_t size)
{
    if (at >= len)
        at = 0;
    if (at + size > len)
        size = len - at;
    sqlite3_bind_text(stmt, index, line + at, (int)size, SQLITE_STATIC);
}

static void write_raw(floor_db *f, long long id, const char *line, size_t len)
{
    sqlite3_stmt *upsert = f->stmt[STMT_UPSERT_RAW];
    sqlite3_bind_int64(upsert, 1, id);
    sqlite3_bind_text(upsert, 2, line, (int)len, SQLITE_STATIC);
    step_done(f->db, upsert, "upsert");
}

static void write_idmap(floor_db *f, sqlite3_int64 local_id, const char *line, size_t len, long long id)
{
    sqlite3_stmt *idmap = f->stmt[STMT_IDMAP];
    sqlite3_bind_int64(idmap, 1, 1); /* the bench job's one sync */
    sqlite3_bind_int64(idmap, 2, local_id);
    sqlite3_bind_int64(idmap, 3, id); /* remote ids are JSON numbers */
    bind_slice(idmap, 4, line, len, 150, 20);
    sqlite3_bind_int64(idmap, 5, (sqlite3_int64)((uint64_t)id * 0x9E3779B97F4A7C15u));
    sqlite3_bind_int64(idmap, 6, (sqlite3_int64)((uint64_t)id * 0xC2B2AE3D27D4EB4Fu));
    sqlite3_bind_double(idmap, 7, 1.7e9 + (double)id);
    step_done(f->db, idmap, "idmap insert");
    f->last_key = ((sqlite3_int64)1 << 40) | local_id;
}

/* What entsync's first import writes for one record: the user row, the
 * profile row linked to it, and the record's one id-map row. */
static void write_store(floor_db *f, long long id, const char *line, size_t len)
{
    sqlite3_stmt *user = f->stmt[STMT_USER];
    bind_slice(user, 1, line, len, 10, 30);
    bind_slice(user, 2, line, len, 50, 17);
    sqlite3_bind_int(user, 3, (int)(id & 1));
    bind_slice(user, 4, line, len, 150, 20);
    step_done(f->db, user, "user insert");
    sqlite3_int64 user_id = sqlite3_last_insert_rowid(f->db);

    sqlite3_stmt *profile = f->stmt[STMT_PROFILE];
    bind_slice(profile, 1, line, len, 190, 8);
    bind_slice(profile, 2, line, len, 200, 8);
    bind_slice(profile, 3, line, len, 240, 14);
    bind_slice(profile, 4, line, len, 220, 7);
    sqlite3_bind_int64(profile, 5, user_id);
    step_done(f->db, profile, "profile insert");

    write_idmap(f, user_id, line, len, id);
}

/* The text of an INSERT OR FAIL of ROWS rows of width parameters each,
 * after head (the table and its columns); the caller frees it. */
static char *rows_sql(const char *head, int width)
{
    size_t size = strlen(head) + (size_t)ROWS * ((size_t)width * 2 + 3) + 1;
    char *sql = malloc(size);
    if (!sql)
        die(NULL, "out of memory");
    size_t at = (size_t)snprintf(sql, size, "%s", head);
    for (int r = 0; r < ROWS; r++) {
        sql[at++] = r ? ',' : ' ';
        sql[at++] = '(';
        for (int i = 0; i < width; i++) {
            if (i)
                sql[at++] = ',';
            sql[at++] = '?';
        }
        sql[at++] = ')';
    }
    sql[at] = '\0';
    return sql;
}

/* Writes the ROWS held records with one statement a table. */
static void write_run(floor_db *f)
{
    sqlite3_stmt *user = f->stmt[STMT_USER_ROWS], *profile = f->stmt[STMT_PROFILE_ROWS];
    int keyed = f->last_key != (((sqlite3_int64)1 << 40) | (f->next_user - 1));
    sqlite3_stmt *idmap = f->stmt[keyed ? STMT_IDMAP_ROWS : STMT_IDMAP_NEXT_ROWS];
    for (int r = 0; r < ROWS; r++) {
        const char *line = f->run[r].line;
        size_t len = f->run[r].len;
        long long id = f->run[r].id;
        sqlite3_int64 user_id = f->next_user + r;
        int u = r * 4, pr = r * 5, m = r * (9 + keyed) + keyed - 1; /* m + 2: the row's sync */
        bind_slice(user, u + 1, line, len, 10, 30);
        bind_slice(user, u + 2, line, len, 50, 17);
        sqlite3_bind_int(user, u + 3, (int)(id & 1));
        bind_slice(user, u + 4, line, len, 150, 20);
        bind_slice(profile, pr + 1, line, len, 190, 8);
        bind_slice(profile, pr + 2, line, len, 200, 8);
        bind_slice(profile, pr + 3, line, len, 240, 14);
        bind_slice(profile, pr + 4, line, len, 220, 7);
        sqlite3_bind_int64(profile, pr + 5, user_id);
        if (keyed)
            sqlite3_bind_int64(idmap, m + 1, ((sqlite3_int64)1 << 40) | user_id);
        sqlite3_bind_int64(idmap, m + 2, 1);
        sqlite3_bind_int64(idmap, m + 3, user_id);
        sqlite3_bind_int64(idmap, m + 4, id);
        bind_slice(idmap, m + 5, line, len, 150, 20);
        sqlite3_bind_int64(idmap, m + 6, (sqlite3_int64)((uint64_t)id * 0x9E3779B97F4A7C15u));
        sqlite3_bind_int64(idmap, m + 7, (sqlite3_int64)((uint64_t)id * 0xC2B2AE3D27D4EB4Fu));
        sqlite3_bind_null(idmap, m + 8);
        sqlite3_bind_double(idmap, m + 9, 1.7e9 + (double)id);
        sqlite3_bind_null(idmap, m + 10);
    }
    step_done(f->db, user, "user rows insert");
    step_done(f->db, profile, "profile rows insert");
    step_done(f->db, idmap, "idmap rows insert");
    f->next_user += ROWS;
    f->last_key = ((sqlite3_int64)1 << 40) | (f->next_user - 1);
    f->held = 0;
}

/* Holds a record for its run, writing the run when it is full. */
static void hold_store(floor_db *f, long long id, const char *line, size_t len)
{
    pending *p = &f->run[f->held];
    free(p->line);
    p->line = malloc(len + 1);
    if (!p->line)
        die(NULL, "out of memory");
    memcpy(p->line, line, len);
    p->len = len;
    p->id = id;
    if (++f->held == ROWS)
        write_run(f);
}

/* Writes the records of an unfinished run one statement a row, before a
 * commit. */
static void flush_store(floor_db *f)
{
    for (int r = 0; r < f->held; r++)
        write_store(f, f->run[r].id, f->run[r].line, f->run[r].len);
    f->next_user += f->held;
    f->held = 0;
}

static void prepare_store(floor_db *f)
{
    f->stmt[STMT_USER] = prepare(f->db,
        "INSERT INTO \"user\" (\"email\",\"name\",\"status\",\"updated\") VALUES (?1,?2,?3,?4)");
    f->stmt[STMT_PROFILE] = prepare(f->db,
        "INSERT INTO \"profile\" (\"city\",\"company\",\"phone\",\"tags\",\"user_id\") VALUES (?1,?2,?3,?4,?5)");
    f->stmt[STMT_IDMAP] = prepare(f->db,
        "INSERT INTO entsync_idmap"
        " (key, sync, local_id, remote_id, changed, hash, raw_hash, version, synced_at, seen_pass)"
        " VALUES ((?1 << 40) | ?2, ?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, NULL)");
    static const struct { int slot, width; const char *head; } rows[] = {
        {STMT_USER_ROWS, 4, "INSERT OR FAIL INTO \"user\" (\"email\",\"name\",\"status\",\"updated\") VALUES"},
        {STMT_PROFILE_ROWS, 5,
         "INSERT OR FAIL INTO \"profile\" (\"city\",\"company\",\"phone\",\"tags\",\"user_id\") VALUES"},
        {STMT_IDMAP_ROWS, 10, "INSERT OR FAIL INTO entsync_idmap"
         " (key, sync, local_id, remote_id, changed, hash, raw_hash, version, synced_at, seen_pass) VALUES"},
        {STMT_IDMAP_NEXT_ROWS, 9, "INSERT OR FAIL INTO entsync_idmap"
         " (sync, local_id, remote_id, changed, hash, raw_hash, version, synced_at, seen_pass) VALUES"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char *sql = rows_sql(rows[i].head, rows[i].width);
        f->stmt[rows[i].slot] = prepare(f->db, sql);
        free(sql);
    }
    sqlite3_stmt *top = prepare(f->db, "SELECT coalesce(max(id), 0) + 1 FROM \"user\"");
    if (sqlite3_step(top) != SQLITE_ROW)
        die(f->db, "max(id)");
    f->next_user = sqlite3_column_int64(top, 0);
    sqlite3_finalize(top);
    top = prepare(f->db, "SELECT coalesce(max(key), 0) FROM entsync_idmap");
    if (sqlite3_step(top) != SQLITE_ROW)
        die(f->db, "max(key)");
    f->last_key = sqlite3_column_int64(top, 0);
    sqlite3_finalize(top);
}

int main(int argc, char **argv)
{
    int store_mode = argc > 1 && strcmp(argv[1], "--store") == 0;
    if (store_mode) {
        argv++;
        argc--;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: bench_floor [--store] DATA.ndjson STORE.db [BATCH]\n");
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
    floor_db f = {0};
    if (store_mode && sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) != SQLITE_OK)
        die(NULL, "SQLITE_CONFIG_MEMSTATUS");
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | (store_mode ? SQLITE_OPEN_NOMUTEX : 0);
    if (sqlite3_open_v2(argv[2], &f.db, flags, NULL) != SQLITE_OK)
        die(f.db, "open");
    exec(f.db, "PRAGMA page_size=16384"); /* as entsync's new stores */
    exec(f.db, "PRAGMA journal_mode=WAL");
    exec(f.db, "PRAGMA synchronous=NORMAL");
    if (store_mode) {
        exec(f.db, "PRAGMA temp_store=MEMORY");
        exec(f.db, "PRAGMA cache_size=-16384");
        prepare_store(&f);
    } else {
        exec(f.db, "CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, line TEXT NOT NULL)");
        f.stmt[STMT_UPSERT_RAW] = prepare(f.db,
            "INSERT INTO raw (id, line) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET line = excluded.line");
    }

    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long long line_no = 0, stored = 0;
    long in_batch = 0;
    exec(f.db, "BEGIN");
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
        if (store_mode)
            hold_store(&f, id, line, (size_t)len);
        else
            write_raw(&f, id, line, (size_t)len);
        stored++;
        if (++in_batch == batch) {
            if (store_mode)
                flush_store(&f);
            exec(f.db, "COMMIT");
            exec(f.db, "BEGIN");
            in_batch = 0;
        }
    }
    if (store_mode)
        flush_store(&f);
    exec(f.db, "COMMIT");
    if (ferror(in)) {
        perror(argv[1]);
        return 1;
    }
    fclose(in);
    free(line);
    for (int i = 0; i < STMT_COUNT; i++)
        sqlite3_finalize(f.stmt[i]);
    for (int r = 0; r < ROWS; r++)
        free(f.run[r].line);
    if (sqlite3_close(f.db) != SQLITE_OK)
        die(f.db, "close");
    printf("%lld lines\n", stored);
    return 0;
}

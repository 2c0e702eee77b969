# entsync: the C host, the Lua C module the specs load, the specs.
#
# The C core is compiled once into position-independent objects that serve
# both bin/entsync-run (Lua linked in) and build/lib/entsync/core.so (loaded
# by the stock lua5.4 interpreter, which already carries Lua's symbols).
# One file is C++: src/json_simd.cc, the shim over simdjson's C++ interface
# (a C interface, built without exceptions); both link libsimdjson and
# libstdc++.

PREFIX   ?= /usr/local
BUILD    ?= build
BIN      ?= bin
CC       ?= cc
CXX      ?= g++
PKGS      = lua5.4 libcurl sqlite3 libmicrohttpd libcrypto hiredis libxxhash
SANITIZE ?=

OPT      ?= -O2 -g
WARN      = -Wall -Wextra -Werror
ES_CFLAGS = $(OPT) -std=c11 -D_GNU_SOURCE -pthread -fPIC $(WARN) $(SANITIZE) $(CFLAGS)
ES_CXXFLAGS = $(OPT) -std=c++17 -fPIC -fno-exceptions $(WARN) $(SANITIZE) $(CXXFLAGS)
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# simdjson's flags (SIMDJSON_THREADS_ENABLED) must match its library's build.
SIMDJSON_CFLAGS = $(shell pkg-config --cflags simdjson 2>/dev/null)
LUA_LIBS   = $(shell pkg-config --libs lua5.4 2>/dev/null)
DEP_LIBS   = $(shell pkg-config --libs libcurl sqlite3 libmicrohttpd libcrypto hiredis libxxhash 2>/dev/null) -lreadline -lsimdjson -lstdc++

CORE_SRC = src/store.c src/hash.c src/lock.c src/fsutil.c src/http.c src/httpd.c src/loop.c src/notify.c \
           src/readline.c src/sign.c src/redis.c src/json.c src/document.c src/marks.c src/record.c src/core.c
CORE_CXX = src/json_simd.cc
CORE_OBJ = $(CORE_SRC:src/%.c=$(BUILD)/obj/%.o) $(CORE_CXX:src/%.cc=$(BUILD)/obj/%.o)
MAIN_OBJ = $(BUILD)/obj/main.o
MODULE   = $(BUILD)/lib/entsync/core.so
HOST     = $(BIN)/entsync-run

# Debian packages entsync builds and tests with; `make deps` installs the
# missing ones and is silent when all are present.
DEB_PKGS = liblua5.4-dev lua5.4 lua-cjson libcurl4-openssl-dev libsqlite3-dev \
           libsimdjson-dev libxxhash-dev g++ libreadline-dev libmicrohttpd-dev libssl-dev lua-busted pkg-config sqlite3 python3 curl \
           openssl jq chromium systemd redis-server libhiredis-dev strace time

BUSTED   = lua5.4 /usr/bin/busted

.PHONY: all deps test asan clean install quickstart bench

all: deps $(HOST) $(MODULE)

deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BUILD)/obj/%.o: src/%.c src/*.h | deps
	@mkdir -p $(dir $@)
	$(CC) $(ES_CFLAGS) $(PKG_CFLAGS) -c -o $@ $<

$(BUILD)/obj/%.o: src/%.cc src/*.h | deps
	@mkdir -p $(dir $@)
	$(CXX) $(ES_CXXFLAGS) $(SIMDJSON_CFLAGS) -c -o $@ $<

$(HOST): $(CORE_OBJ) $(MAIN_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ES_CFLAGS) -o $@ $^ $(LUA_LIBS) $(DEP_LIBS) -lm -Wl,-E

$(MODULE): $(CORE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ES_CFLAGS) -shared -o $@ $^ $(DEP_LIBS)

# The last line of `make test` is busted's own count as "N passed, N failed".
# `make asan` runs busted inside the sanitized entsync-run (--script), whose
# entsync.core is the instrumented one.
test: all
	@ENTSYNC_BIN=$(CURDIR)/$(HOST) ENTSYNC_CPATH=$(CURDIR)/$(BUILD)/lib/?.so \
	  scripts/run-specs $(BUSTED)

ASAN_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
asan: deps
	$(MAKE) BUILD=build/asan BIN=build/asan/bin OPT="-O1 -g" SANITIZE="$(ASAN_FLAGS)" \
	  build/asan/bin/entsync-run build/asan/lib/entsync/core.so
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ENTSYNC_BIN=$(CURDIR)/build/asan/bin/entsync-run \
	  ENTSYNC_CPATH=$(CURDIR)/build/asan/lib/?.so \
	  scripts/run-specs $(CURDIR)/build/asan/bin/entsync-run --script /usr/bin/busted

# Runs the quickstart job on its bundled data, then shows some of what it
# stored. Run it again: every entity is reported unchanged.
quickstart: all
	$(HOST) examples/quickstart/job.lua run
	@sqlite3 -header -column examples/quickstart/entsync.db \
	  "SELECT c.id, c.name, c.email, c.active, p.company, p.city \
	   FROM contact c JOIN contact_profile p ON p.contact_id = c.id ORDER BY c.id LIMIT 5"

bench: all
	scripts/bench

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/entsync
	install -m 755 $(HOST) $(DESTDIR)$(PREFIX)/bin/entsync-run
	cp -R lua providers mappings contrib $(DESTDIR)$(PREFIX)/share/entsync/

clean:
	rm -rf build bin

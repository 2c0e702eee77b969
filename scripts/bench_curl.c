/*
 * bench_curl: the CPU a bare libcurl client spends fetching a listing,
 * the HTTP baseline scripts/bench_http.py sets beside entsync's client.
 *
 *   bench_curl PORT PATH PAGES PER_PAGE CONCURRENCY
 *
 * Fetches PATH?page=1..PAGES&per_page=PER_PAGE from 127.0.0.1:PORT with
 * CONCURRENCY transfers in flight on one multi handle (curl_multi_perform
 * and curl_multi_poll, libcurl's documented loop; keep-alive connections
 * reused), each body kept in memory until its transfer ends, then dropped.
 * Nothing is parsed or stored: it is the least an importer reading these
 * pages through libcurl spends on HTTP alone.
 *
 * Prints "PAGES pages BYTES bytes CPU_SECONDS" (user + sys of the process,
 * start-up included) on stdout; exits non-zero when a transfer fails or a
 * status is not 200.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

typedef struct body {
    char *data;
    size_t len, cap;
} body;

static size_t on_body(char *data, size_t size, size_t count, void *user)
{
    body *b = user;
    size_t n = size * count;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 16384;
        while (cap < b->len + n)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown)
            return 0;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
    return n;
}

/* Starts the transfer of page n into b. */
static void start(CURLM *multi, const char *base, int n, int per_page, body *b)
{
    char url[512];
    snprintf(url, sizeof url, "%s?page=%d&per_page=%d", base, n, per_page);
    CURL *easy = curl_easy_init();
    if (!easy) {
        fprintf(stderr, "bench_curl: out of memory\n");
        exit(1);
    }
    b->len = 0;
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, (char *)b);
    curl_multi_add_handle(multi, easy);
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: bench_curl PORT PATH PAGES PER_PAGE CONCURRENCY\n");
        return 2;
    }
    int port = atoi(argv[1]), pages = atoi(argv[3]), per_page = atoi(argv[4]), concurrency = atoi(argv[5]);
    char base[256];
    snprintf(base, sizeof base, "http://127.0.0.1:%d%s", port, argv[2]);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURLM *multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, 64L);
    body *bodies = calloc((size_t)concurrency, sizeof *bodies);
    int next = 1, done = 0, running = 0;
    size_t bytes = 0;
    for (int i = 0; i < concurrency && next <= pages; i++)
        start(multi, base, next++, per_page, &bodies[i]);
    while (done < pages) {
        curl_multi_perform(multi, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            body *b;
            long status = 0;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&b);
            curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
            if (msg->data.result != CURLE_OK || status != 200) {
                fprintf(stderr, "bench_curl: %s, status %ld\n", curl_easy_strerror(msg->data.result), status);
                return 1;
            }
            bytes += b->len;
            done++;
            curl_multi_remove_handle(multi, msg->easy_handle);
            curl_easy_cleanup(msg->easy_handle);
            if (next <= pages)
                start(multi, base, next++, per_page, b);
        }
        if (done < pages)
            curl_multi_poll(multi, NULL, 0, 1000, NULL);
    }
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    double cpu = (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 +
                 (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
    printf("%d pages %zu bytes %.3f\n", done, bytes, cpu);
    for (int i = 0; i < concurrency; i++)
        free(bodies[i].data);
    free(bodies);
    curl_multi_cleanup(multi);
    curl_global_cleanup();
    return 0;
}

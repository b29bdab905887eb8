/* Anchor server: a minimal echo server on Debian's libwebsockets (4.1.x), default poll() event loop.
 * Complete messages (fragments reassembled) are copied into a per-connection FIFO and
 * written back one lws_write() per SERVER_WRITEABLE callback, as lws requires.
 * Usage: lws-echo PORT   (listens on 127.0.0.1)
 * Build: cc -O2 -o lws-echo lws-echo.c $(pkg-config --cflags --libs libwebsockets)  */
#include <libwebsockets.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

struct msg { struct msg *next; size_t len; int binary; unsigned char buf[]; /* LWS_PRE + len */ };
struct pss {
    struct msg *head, *tail;
    unsigned char *rx; size_t rx_len, rx_cap; int rx_binary;
};

static volatile int interrupted;
static void on_sig(int s) { (void)s; interrupted = 1; }

static int cb_echo(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    struct pss *pss = (struct pss *)user;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED:
        memset(pss, 0, sizeof(*pss));
        break;
    case LWS_CALLBACK_RECEIVE: {
        if (lws_is_first_fragment(wsi)) { pss->rx_len = 0; pss->rx_binary = lws_frame_is_binary(wsi); }
        if (pss->rx_len + len > pss->rx_cap) {
            size_t cap = pss->rx_cap ? pss->rx_cap : 256;
            while (cap < pss->rx_len + len) cap *= 2;
            unsigned char *n = realloc(pss->rx, cap);
            if (!n) return -1;
            pss->rx = n; pss->rx_cap = cap;
        }
        memcpy(pss->rx + pss->rx_len, in, len);
        pss->rx_len += len;
        if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
            struct msg *m = malloc(sizeof(*m) + LWS_PRE + pss->rx_len);
            if (!m) return -1;
            m->next = NULL; m->len = pss->rx_len; m->binary = pss->rx_binary;
            memcpy(m->buf + LWS_PRE, pss->rx, pss->rx_len);
            if (pss->tail) pss->tail->next = m; else pss->head = m;
            pss->tail = m;
            pss->rx_len = 0;
            lws_callback_on_writable(wsi);
        }
        break;
    }
    case LWS_CALLBACK_SERVER_WRITEABLE: {
        struct msg *m = pss->head;
        if (!m) break;
        int n = lws_write(wsi, m->buf + LWS_PRE, m->len, m->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
        if (n < (int)m->len) return -1;
        pss->head = m->next;
        if (!pss->head) pss->tail = NULL;
        free(m);
        if (pss->head) lws_callback_on_writable(wsi);
        break;
    }
    case LWS_CALLBACK_CLOSED:
        while (pss->head) { struct msg *m = pss->head; pss->head = m->next; free(m); }
        free(pss->rx); pss->rx = NULL;
        break;
    default:
        break;
    }
    return 0;
}

static struct lws_protocols protocols[] = {
    { "echo", cb_echo, sizeof(struct pss), 65536, 0, NULL, 0 },
    { NULL, NULL, 0, 0, 0, NULL, 0 }
};

int main(int argc, char **argv)
{
    struct lws_context_creation_info info;
    struct lws_context *ctx;
    int port = argc > 1 ? atoi(argv[1]) : 9001;

    signal(SIGINT, on_sig);
    signal(SIGTERM, on_sig);
    lws_set_log_level(LLL_ERR | LLL_WARN, NULL);
    memset(&info, 0, sizeof(info));
    info.port = port;
    info.iface = "127.0.0.1";
    info.protocols = protocols;
    info.pt_serv_buf_size = 32768;     /* default 4096 would split 16 KiB reads */
    info.fd_limit_per_thread = 65536;  /* don't size tables for a 1M ulimit */
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6; /* bind 127.0.0.1 only */
    ctx = lws_create_context(&info);
    if (!ctx) { fprintf(stderr, "lws init failed\n"); return 1; }
    fprintf(stderr, "lws-echo listening on 127.0.0.1:%d (lws %s)\n", port, lws_get_library_version());
    while (!interrupted && lws_service(ctx, 0) >= 0)
        ;
    lws_context_destroy(ctx);
    return 0;
}

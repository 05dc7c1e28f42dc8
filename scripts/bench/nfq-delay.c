/*
 * nfq-delay: holds every packet of an NFQUEUE queue for a fixed time, then accepts it.
 *
 *   nfq-delay QUEUE_NUM DELAY_MS
 *
 * Used by scripts/bench.sh to add latency where the kernel has no sch_netem: an iptables
 * rule `-i lo -j NFQUEUE --queue-num QUEUE_NUM` in the INPUT chain of a private network
 * namespace sends each loopback packet here once, so DELAY_MS each way makes a round trip
 * of 2 × DELAY_MS.
 *
 * Packets arrive in order and all wait the same time, so a FIFO keeps them in order; the
 * verdicts go out in batches (nfq_set_verdict_batch accepts every id up to the one given).
 * Only packet metadata is copied to user space, and GSO packets stay whole, so the cost per
 * byte is small. Runs until SIGINT/SIGTERM; on exit it prints how many packets it delayed.
 *
 * Build: gcc -O2 -o nfq-delay nfq-delay.c $(pkg-config --cflags --libs libnetfilter_queue)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#define RING (1u << 20) /* packets in flight at most: 1M × 10 ms = 100M packets/s */

static uint32_t ids[RING];
static uint64_t due[RING];
static uint64_t head, tail; /* ring indices: [head, tail) are waiting */
static uint64_t delay_ns, delayed, overflowed;
static volatile sig_atomic_t stop;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *data)
{
    (void)msg;
    (void)data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (!ph)
        return 0;
    uint32_t id = ntohl(ph->packet_id);
    if (tail - head >= RING) {
        /* Cannot hold it: let it through at once rather than drop it. */
        overflowed++;
        return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
    }
    ids[tail % RING] = id;
    due[tail % RING] = now_ns() + delay_ns;
    tail++;
    delayed++;
    return 0;
}

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s QUEUE_NUM DELAY_MS\n", argv[0]);
        return 2;
    }
    int queue = atoi(argv[1]);
    delay_ns = (uint64_t)(atof(argv[2]) * 1e6);

    struct nfq_handle *h = nfq_open();
    if (!h) {
        perror("nfq_open");
        return 1;
    }
    /* Harmless on current kernels, needed on old ones. */
    nfq_unbind_pf(h, AF_INET);
    if (nfq_bind_pf(h, AF_INET) < 0) {
        perror("nfq_bind_pf");
        return 1;
    }
    struct nfq_q_handle *qh = nfq_create_queue(h, (uint16_t)queue, on_packet, NULL);
    if (!qh) {
        perror("nfq_create_queue");
        return 1;
    }
    if (nfq_set_mode(qh, NFQNL_COPY_META, 0) < 0) {
        perror("nfq_set_mode");
        return 1;
    }
    /* Room in the kernel for every packet we hold (default: 1024). */
    if (nfq_set_queue_maxlen(qh, 1 << 20) < 0)
        perror("nfq_set_queue_maxlen");
    /* Large GSO packets as they are: no segmentation, fewer messages. */
    if (nfq_set_queue_flags(qh, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO) < 0)
        perror("nfq_set_queue_flags(GSO)");
    nfnl_rcvbufsiz(nfq_nfnlh(h), 64 << 20);

    int fd = nfq_fd(h);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    fprintf(stderr, "nfq-delay: queue %d, %.1f ms per packet\n", queue, delay_ns / 1e6);
    static char buf[1 << 16];
    uint64_t recv_errors = 0;
    while (!stop) {
        /* Release every packet that is due, in one batch verdict. */
        uint64_t t = now_ns();
        uint64_t last = head;
        while (last < tail && due[last % RING] <= t)
            last++;
        if (last > head) {
            nfq_set_verdict_batch(qh, ids[(last - 1) % RING], NF_ACCEPT);
            head = last;
        }
        struct timespec timeout, *timeout_p = NULL;
        if (head < tail) {
            uint64_t wait = due[head % RING] > t ? due[head % RING] - t : 0;
            timeout.tv_sec = (time_t)(wait / 1000000000u);
            timeout.tv_nsec = (long)(wait % 1000000000u);
            timeout_p = &timeout;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int ready = ppoll(&pfd, 1, timeout_p, NULL);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            perror("poll");
            break;
        }
        if (ready == 0)
            continue;
        /* Drain what is there without blocking. */
        for (;;) {
            ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (n > 0) {
                nfq_handle_packet(h, buf, (int)n);
                continue;
            }
            if (n < 0 && errno == ENOBUFS) {
                /* The kernel dropped messages for us: those packets are lost (TCP resends). */
                recv_errors++;
                continue;
            }
            break;
        }
    }
    /* Let the rest go before leaving. */
    if (head < tail)
        nfq_set_verdict_batch(qh, ids[(tail - 1) % RING], NF_ACCEPT);
    fprintf(stderr, "nfq-delay: delayed %llu packets, %llu passed undelayed (ring full), %llu ENOBUFS\n",
            (unsigned long long)delayed, (unsigned long long)overflowed, (unsigned long long)recv_errors);
    nfq_destroy_queue(qh);
    nfq_close(h);
    return 0;
}

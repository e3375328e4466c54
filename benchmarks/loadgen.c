/* Load generator for the benchmark harness: sends pre-built datagrams as fast as asked, and no faster.
 *
 *   loadgen udp HOST PORT FILE RATE SECONDS     (RATE in datagrams/s, 0 = as fast as possible)
 *   loadgen unix PATH FILE RATE SECONDS
 *
 * FILE holds the datagrams, each as a 4-byte little-endian length then the bytes; they are sent in a loop.
 * Prints one JSON line: {"sent": datagrams, "seconds": elapsed, "errors": send errors}.
 * Uses sendmmsg in batches of 64 so that the generator is never the bottleneck.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    int is_unix = argc == 6 && strcmp(argv[1], "unix") == 0;
    if (!(argc == 7 && strcmp(argv[1], "udp") == 0) && !is_unix) {
        fprintf(stderr, "usage: loadgen udp HOST PORT FILE RATE SECONDS | loadgen unix PATH FILE RATE SECONDS\n");
        return 2;
    }
    const char *file = argv[is_unix ? 3 : 4];
    double rate = atof(argv[is_unix ? 4 : 5]), seconds = atof(argv[is_unix ? 5 : 6]);

    FILE *f = fopen(file, "rb");
    if (!f) { perror(file); return 1; }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *blob = malloc(size);
    if (fread(blob, 1, size, f) != (size_t)size) { perror("read"); return 1; }
    fclose(f);
    size_t count = 0, capacity = 1024;
    struct iovec *iov = malloc(capacity * sizeof *iov);
    for (long at = 0; at + 4 <= size;) {
        uint32_t len = blob[at] | blob[at + 1] << 8 | blob[at + 2] << 16 | (uint32_t)blob[at + 3] << 24;
        if (count == capacity) iov = realloc(iov, (capacity *= 2) * sizeof *iov);
        iov[count].iov_base = blob + at + 4;
        iov[count++].iov_len = len;
        at += 4 + len;
    }
    if (!count) { fprintf(stderr, "no datagrams in %s\n", file); return 1; }

    int fd;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    memset(&addr, 0, sizeof addr);
    if (is_unix) {
        struct sockaddr_un *un = (struct sockaddr_un *)&addr;
        un->sun_family = AF_UNIX;
        strncpy(un->sun_path, argv[2], sizeof un->sun_path - 1);
        addr_len = sizeof *un;
        fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&addr;
        in->sin_family = AF_INET;
        in->sin_port = htons(atoi(argv[3]));
        inet_pton(AF_INET, argv[2], &in->sin_addr);
        addr_len = sizeof *in;
        fd = socket(AF_INET, SOCK_DGRAM, 0);
    }
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, addr_len) < 0) { perror("connect"); return 1; }
    int sndbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    double start = now(), deadline = start + seconds;
    unsigned long sent = 0, errors = 0;
    size_t next = 0;
    while (1) {
        double t = now();
        if (t >= deadline) break;
        int batch = BATCH;
        if (rate > 0) {
            double due = (t - start) * rate - sent;  /* datagrams owed by now */
            if (due < 1) { struct timespec pause = {0, 50000}; nanosleep(&pause, NULL); continue; }
            if (due < batch) batch = (int)due;
        }
        for (int i = 0; i < batch; i++) {
            msgs[i].msg_hdr.msg_iov = &iov[next];
            msgs[i].msg_hdr.msg_iovlen = 1;
            next = next + 1 == count ? 0 : next + 1;
        }
        int done = sendmmsg(fd, msgs, batch, 0);
        if (done < 0) {
            if (errno != EAGAIN && errno != ENOBUFS && errno != ECONNREFUSED) { perror("sendmmsg"); return 1; }
            errors++;
            if (is_unix) { struct timespec pause = {0, 20000}; nanosleep(&pause, NULL); }  /* full unix queue */
            next = (next + count - batch) % count;
            continue;
        }
        sent += done;
        if (done < batch) next = (next + count - (batch - done)) % count;
    }
    printf("{\"sent\": %lu, \"seconds\": %.6f, \"errors\": %lu}\n", sent, now() - start, errors);
    return 0;
}

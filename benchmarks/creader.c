/* The reference reader of the benchmarks: the least a DogStatsD server must do, and nothing more.
 *
 *   creader udp PORT        (binds 127.0.0.1:PORT)
 *   creader unix PATH
 *
 * Blocks in recvmmsg (64 datagrams at a time) with the OS default receive buffer and counts datagrams. A
 * datagram "!count" makes it print, on one line, how many it received since the last "!count". It parses
 * nothing: what it loses, any server on this machine loses.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BATCH 64
#define SIZE 65536

static char buffers[BATCH][SIZE];

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: creader udp PORT | creader unix PATH\n");
        return 2;
    }
    int fd;
    if (strcmp(argv[1], "udp") == 0) {
        struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
        fd = socket(AF_INET, SOCK_DGRAM, 0);
        if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0) { perror("bind"); return 1; }
    } else {
        struct sockaddr_un address = {.sun_family = AF_UNIX};
        strncpy(address.sun_path, argv[2], sizeof address.sun_path - 1);
        unlink(argv[2]);
        fd = socket(AF_UNIX, SOCK_DGRAM, 0);
        if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0) { perror("bind"); return 1; }
    }
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    long long count = 0;
    for (;;) {
        memset(messages, 0, sizeof messages);
        for (int i = 0; i < BATCH; i++) {
            vectors[i].iov_base = buffers[i];
            vectors[i].iov_len = SIZE;
            messages[i].msg_hdr.msg_iov = &vectors[i];
            messages[i].msg_hdr.msg_iovlen = 1;
        }
        int received = recvmmsg(fd, messages, BATCH, MSG_WAITFORONE, NULL);
        for (int i = 0; i < received; i++) {
            if (messages[i].msg_len == 6 && memcmp(buffers[i], "!count", 6) == 0) {
                printf("%lld\n", count);
                fflush(stdout);
                count = 0;
            } else {
                count++;
            }
        }
    }
}

/* A datagram socket drained by a native thread, so that the kernel queue empties while Python is busy
 * (relay/runtime/listen.py). Optional and Linux-only: without it, the event loop reads the socket itself.
 *
 *   Reader(fd, max_size, queue_bytes, threads=1)
 *
 * starts a thread that waits on `fd` with poll() and empties it with recvmmsg(), 64 datagrams at a time, without
 * the GIL (it never touches a Python object); with threads=2 (for a Unix datagram socket: see PLACEMENT) two
 * threads do, each kept to its half of the process's CPUs. Each datagram is appended to an in-memory queue bounded
 * at `queue_bytes`. A full queue stops the reading until the next take (see wait_for_room); a datagram of the last
 * batch that does not fit is dropped and counted (`dropped`). A datagram
 * longer than `max_size` keeps its first `max_size` bytes and is counted in `truncated`, as the Agent's reader cuts
 * it at dogstatsd_buffer_size. The first datagram queued after a `take` writes to `wakeup_fd` (an eventfd), so
 * the event loop wakes once per batch, not once per datagram.
 *
 *   take(limit, join=False, mark=b"") -> (datagrams: list[bytes] | bytes, truncated, errors, more, pids, count)
 *
 * hands out the queue in slices of about `limit` bytes: the first take after the last slice takes the whole
 * queue from the thread (`truncated` counts those datagrams, `errors` the read errors since the last take; the thread then has room again), and `more` says
 * whether anything is left, in slices or queued since; `pids` are the senders' (credentials=True, see CREDENTIALS).
 * With `join`, the slice's `count` datagrams come as one bytes joined with "\n" (not with credentials, nor when
 * one starts with `mark`: then as a list). It clears the eventfd. `stop()` ends the thread and joins it; what it had
 * queued is still there for the last takes.
 *
 *   Reader(fd, max_size, queue_bytes, 1, stream=True, connections=[(fd, pending bytes), ...])
 *
 * serves a listening Unix stream socket instead (see STREAM): the thread accepts its clients and cuts what they
 * write at the 4-byte little-endian length frames, one queued datagram a frame; `connections` are clients handed
 * over by a reload, with the start of a frame they had sent. After `stop()`, `hand_over()` gives each client's
 * socket and unfinished frame to the caller; `read_clients()` queues what they wrote since and
 * `close_connections()` closes them (a cut frame is an error).
 *
 * The queue's memory is mapped, not malloc'd, and grows from 64 KiB as datagrams come: an idle reader holds next
 * to nothing. When a take leaves nothing behind, a buffer over KEEP_BYTES is unmapped, so the memory a burst took
 * goes back to the system once the burst is delivered (`buffer_bytes` says what both buffers hold).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#ifdef __linux__  /* Python.h defines _GNU_SOURCE, which recvmmsg needs */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define FIRST_BYTES (1 << 16)  /* a buffer's first mapping */
#define KEEP_BYTES (1 << 20)   /* a drained buffer larger than this is unmapped */

typedef struct {
    char *data;
    size_t used, size;
} Buffer;

#define MAX_THREADS 2

typedef struct Reader Reader;

typedef struct {  /* a stream client and the bytes of its frames not yet whole */
    int fd;
    char *data;
    size_t used, size;
} Connection;

typedef struct {
    Reader *reader;
    int index;
    pthread_t thread;
} Drainer;

struct Reader {
    PyObject_HEAD
    int fd, wakeup_fd, stop_fd;
    size_t max_size, queue_bytes;
    pthread_mutex_t lock;
    pthread_cond_t room;        /* signalled by take: the queue has room again */
    Buffer queue;               /* records: a uint32 length then its bytes, appended by the thread */
    Buffer pending;             /* the queue as the loop took it last, handed out a slice a take (GIL only) */
    size_t pending_offset, pending_bytes;
    size_t queued_datagrams, queued_bytes;
    int woken;                  /* wakeup_fd written since the last take */
    unsigned long long truncated, errors, dropped;  /* under `lock`; the first two since the last take */
    int last_errno;
    Drainer drainers[MAX_THREADS];
    int threads, started, stopping;
    int stream;                 /* a listening stream socket: its clients are the thread's alone while it runs */
    int credentials;            /* SO_PASSCRED: each record carries its sender's pid (see CREDENTIALS) */
    Connection *connections;
    int connection_count, connection_room;
    double last_data;           /* CLOCK_MONOTONIC of the last bytes read from a client */
};

/* Room for `needed` bytes, doubling the mapping: mremap moves pages, not bytes. 0 when the system refuses. */
static int buffer_reserve(Buffer *buffer, size_t needed) {
    if (needed <= buffer->size) return 1;
    size_t size = buffer->size ? buffer->size : FIRST_BYTES;
    while (size < needed) size *= 2;
    void *grown = buffer->data ? mremap(buffer->data, buffer->size, size, MREMAP_MAYMOVE)
                               : mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (grown == MAP_FAILED) return 0;
    buffer->data = grown;
    buffer->size = size;
    return 1;
}

/* Give the buffer's memory back to the system (munmap: whatever malloc's arenas would have kept). */
static void buffer_release(Buffer *buffer) {
    if (buffer->data != NULL) munmap(buffer->data, buffer->size);
    buffer->data = NULL;
    buffer->used = buffer->size = 0;
}

/* Append one record to the queue, growing it up to its bound (`bounded`; a stream's frames are never dropped: its
 * thread stops reading instead, see wait_for_room); 0 when it does not fit. Called under the lock. */
static int enqueue(Reader *self, const char *data, uint32_t length, int bounded, int32_t pid) {
    if (bounded && self->queued_bytes + length > self->queue_bytes) return 0;  /* counts datagram bytes only */
    size_t header = sizeof length + (self->credentials ? sizeof pid : 0);
    size_t needed = self->queue.used + header + length;
    if (!buffer_reserve(&self->queue, needed)) return 0;
    memcpy(self->queue.data + self->queue.used, &length, sizeof length);
    if (self->credentials) memcpy(self->queue.data + self->queue.used + sizeof length, &pid, sizeof pid);
    memcpy(self->queue.data + self->queue.used + header, data, length);
    self->queue.used = needed;
    self->queued_datagrams++;
    self->queued_bytes += length;
    return 1;
}

static double now_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + now.tv_nsec / 1e9;
}

/* Write the eventfd unless it was written since the last take. */
static void wake(Reader *self) {
    pthread_mutex_lock(&self->lock);
    int first = !self->woken;
    self->woken = 1;
    pthread_mutex_unlock(&self->lock);
    if (first) {
        uint64_t one = 1;
        ssize_t written = write(self->wakeup_fd, &one, sizeof one);
        (void)written;  /* an eventfd only refuses at 2^64-2: then it is readable anyway */
    }
}

/* The event loop is woken once datagrams have waited WAKE_DELAY, or WAKE_BYTES of them wait, whichever comes
 * first: a burst of small datagrams then costs the interpreter one wakeup, not one each, and the interpreter
 * leaves the cores to this thread and the clients while the burst lasts. */
#define WAKE_DELAY 0.002
#define WAKE_BYTES (256 * 1024)
/* After datagrams were queued: wake the loop at once when it was already signalled or WAKE_BYTES wait, else
 * remember when the first of them came (sleep_limit wakes it WAKE_DELAY later). */
static void settle(Reader *self, double *first_waiting) {
    pthread_mutex_lock(&self->lock);
    int signalled = self->woken, full = self->queued_bytes >= WAKE_BYTES;
    pthread_mutex_unlock(&self->lock);
    if (signalled || full) {
        if (!signalled) wake(self);
        *first_waiting = 0;  /* the loop takes these with the rest */
    } else if (!*first_waiting) {
        *first_waiting = now_seconds();
    }
}

/* How long the thread may sleep in ppoll: until WAKE_DELAY after the first datagram not yet signalled, or until
 * data or stop (NULL). When that moment has passed, the loop is woken now. */
static struct timespec *sleep_limit(Reader *self, double *first_waiting, struct timespec *timeout) {
    if (!*first_waiting) return NULL;
    double left = *first_waiting + WAKE_DELAY - now_seconds();
    if (left <= 0) {
        wake(self);
        *first_waiting = 0;
        return NULL;
    }
    *timeout = (struct timespec){0, (long)(left * 1e9)};
    return timeout;
}

/* PLACEMENT. A client without buffering sends a datagram every few microseconds, and a Unix socket holds only
 * net.unix.max_dgram_qlen of them (often 10): the reader must run within ~200 us of the first one, all burst long.
 * A Unix socket's send wakes the reader synchronously, and the scheduler then puts the reader on the sender's own
 * CPU, where it waits for the sender's time slice to end (milliseconds) while another core idles: the sends fail
 * meanwhile. A thread that spins instead of sleeping does no better: it waits there as well. So:
 *  - with threads=2, both threads poll the socket, each allowed on one half of the CPUs: whichever CPU the sender
 *    runs on, one of them is woken elsewhere and reads at once (the other finds the socket empty, or reads too);
 *  - each thread asks for a short time slice (SLICE_NS, sched_setattr's sched_runtime for SCHED_OTHER, Linux
 *    6.12+, no privilege needed), so that when it does wake on a busy CPU it preempts the running task sooner;
 *  - nothing is held between recvmmsg and the queue's lock, so a preempted thread never stops the other one;
 *  - the relay's other threads are put below them (relay/runtime/readers.py, ReaderPriority).
 * Two threads may each enqueue datagrams they read at the same moment in either order; a client sees no order
 * between its datagrams either (the Agent's workers do not keep one). */
#define SLICE_NS 400000ULL  /* under the default 0.7-3 ms, over a long read of a burst (100 us: preempted mid-burst) */
/* A lone thread (UDP, or a process kept to one CPU) keeps looking for SPIN seconds after a datagram before it
 * sleeps, within SPIN_SHARE of its time (nothing when idle): woken from sleep it would come too late (an idle vCPU
 * takes tens of microseconds to milliseconds to run again). Two threads never spin: the one on the sender's CPU
 * would only hold the sender back and spend the credit it needs to preempt (measured: 85-96 % of a burst under
 * load with a spin, 98-100 % without). */
#define SPIN 0.0005
#define SPIN_SHARE 0.05

/* Ask for a short slice; older kernels ignore sched_runtime for SCHED_OTHER, others refuse it: no harm either way. */
static void ask_short_slice(void) {
    struct {
        uint32_t size, policy;
        uint64_t flags;
        int32_t nice;
        uint32_t priority;
        uint64_t runtime, deadline, period;
    } attributes = {.size = sizeof attributes, .policy = SCHED_OTHER, .runtime = SLICE_NS};
    attributes.nice = getpriority(PRIO_PROCESS, 0);  /* keep this thread's nice */
    (void)syscall(SYS_sched_setattr, 0, &attributes, 0);
}

/* Thread `index` of `count` keeps to every count-th CPU the process may use (from the index-th on). */
static void keep_to_share(int index, int count) {
    cpu_set_t allowed, share;
    if (count < 2 || sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
    CPU_ZERO(&share);
    for (int cpu = 0, rank = 0; cpu < CPU_SETSIZE; cpu++) {
        if (CPU_ISSET(cpu, &allowed) && rank++ % count == index) CPU_SET(cpu, &share);
    }
    if (CPU_COUNT(&share) > 0) pthread_setaffinity_np(pthread_self(), sizeof share, &share);
}

/* A full queue means ingest is behind: the thread then wakes the loop and stops reading until it takes the
 * queue, and what comes meanwhile waits in the socket's buffer (or is dropped there, and counted by the kernel).
 * Reading and dropping it here would only take the core from the ingest that is behind. Returns 1 when it
 * waited, 0 when there was room, -1 when stopping. */
static int wait_for_room(Reader *self) {
    pthread_mutex_lock(&self->lock);
    int full = self->queued_bytes >= self->queue_bytes;
    pthread_mutex_unlock(&self->lock);
    if (!full) return 0;
    wake(self);
    pthread_mutex_lock(&self->lock);
    while (self->queued_bytes >= self->queue_bytes && !__atomic_load_n(&self->stopping, __ATOMIC_ACQUIRE)) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_nsec += 50 * 1000 * 1000;  /* look at `stopping` again at least every 50 ms */
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec += 1;
            deadline.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&self->room, &self->lock, &deadline);
    }
    pthread_mutex_unlock(&self->lock);
    return __atomic_load_n(&self->stopping, __ATOMIC_ACQUIRE) ? -1 : 1;
}

/* CREDENTIALS. With dogstatsd_origin_detection the socket has SO_PASSCRED, and the kernel attaches the sender's
 * pid (in this process's pid namespace) to each datagram; relay/runtime/readers.py finds its container. A
 * datagram without one (or whose sender the namespace cannot see) has pid 0: no origin, as in the Agent. */
static int32_t sender_pid(struct msghdr *header) {
    if (header->msg_controllen == 0) return 0;
    for (struct cmsghdr *message = CMSG_FIRSTHDR(header); message != NULL; message = CMSG_NXTHDR(header, message)) {
        if (message->cmsg_level == SOL_SOCKET && message->cmsg_type == SCM_CREDENTIALS &&
            message->cmsg_len >= CMSG_LEN(sizeof(struct ucred))) {
            struct ucred credentials;
            memcpy(&credentials, CMSG_DATA(message), sizeof credentials);
            return credentials.pid;
        }
    }
    return 0;
}

static void *drain(void *argument) {
    Drainer *drainer = argument;
    Reader *self = drainer->reader;
    pthread_setname_np(pthread_self(), "relay-reader");
    ask_short_slice();
    keep_to_share(drainer->index, self->threads);
    size_t slot = self->max_size + 1;  /* one byte more tells a truncated datagram apart */
    char *scratch = malloc(slot * BATCH);
    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    union {  /* CREDENTIALS: room for one SCM_CREDENTIALS message per datagram, aligned as cmsghdr wants */
        char space[CMSG_SPACE(sizeof(struct ucred))];
        struct cmsghdr align;
    } controls[BATCH];
    if (scratch == NULL) return NULL;
    for (int i = 0; i < BATCH; i++) {
        vectors[i].iov_base = scratch + slot * i;
        vectors[i].iov_len = slot;
    }
    struct pollfd waits[2] = {{.fd = self->fd, .events = POLLIN}, {.fd = self->stop_fd, .events = POLLIN}};
    double first_waiting = 0;  /* when the oldest datagram not yet signalled was queued; 0: none */
    double last_data = 0, spinning_since = 0, spin_budget = SPIN_SHARE, refilled = now_seconds();
    while (!__atomic_load_n(&self->stopping, __ATOMIC_ACQUIRE)) {
        int waited = wait_for_room(self);
        if (waited < 0) break;
        if (waited) first_waiting = 0;  /* the loop was woken and took the queue */
        memset(messages, 0, sizeof messages);
        for (int i = 0; i < BATCH; i++) {
            messages[i].msg_hdr.msg_iov = &vectors[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            if (self->credentials) {
                messages[i].msg_hdr.msg_control = controls[i].space;
                messages[i].msg_hdr.msg_controllen = sizeof controls[i].space;
            }
        }
        int received = recvmmsg(self->fd, messages, BATCH, MSG_DONTWAIT, NULL);
        double now = now_seconds();
        if (spinning_since) spin_budget -= now - spinning_since;
        spinning_since = 0;
        spin_budget = fmin(SPIN_SHARE, spin_budget + (now - refilled) * SPIN_SHARE);
        refilled = now;
        if (received > 0) last_data = now;
        if (received < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && self->threads == 1 && now - last_data < SPIN &&
            spin_budget > 0) {
            spinning_since = now;  /* a burst is on: its next datagram comes sooner than a sleeping thread wakes */
            continue;
        }
        if (received < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct timespec timeout;
            if (ppoll(waits, 2, sleep_limit(self, &first_waiting, &timeout), NULL) < 0 && errno != EINTR) break;
            if (waits[1].revents) break;
            continue;
        }
        if (received < 0) {
            if (errno == EINTR) continue;
            pthread_mutex_lock(&self->lock);
            self->errors++;
            self->last_errno = errno;
            pthread_mutex_unlock(&self->lock);
            if (errno == EBADF || errno == ENOTSOCK) break;
            first_waiting = first_waiting ? first_waiting : now_seconds();  /* the loop counts the error */
            continue;
        }
        pthread_mutex_lock(&self->lock);
        for (int i = 0; i < received; i++) {
            uint32_t length = messages[i].msg_len;
            if (length > self->max_size || (messages[i].msg_hdr.msg_flags & MSG_TRUNC)) {
                length = (uint32_t)self->max_size;
                self->truncated++;
            }
            if (!enqueue(self, (char *)vectors[i].iov_base, length, 1, sender_pid(&messages[i].msg_hdr))) {
                self->dropped++;
            }
        }
        pthread_mutex_unlock(&self->lock);
        settle(self, &first_waiting);
    }
    free(scratch);
    return NULL;
}

/* STREAM. A Unix stream socket's clients (the Go and Java clients' `unixstream://`) write frames: a 4-byte
 * little-endian length, then that many bytes of lines. The thread accepts them, reads whatever each wrote, and
 * queues each whole frame as one datagram (cut at max_size, as a datagram is). A stream is never dropped from:
 * while the queue is full the thread stops reading, and the clients' writes wait in their sockets' buffers. */
#define READ_BYTES (128 * 1024)
#define MAX_FRAME (8 * 1024 * 1024)  /* a frame announced longer is a broken client: its connection is closed */

static void note_error(Reader *self, int error) {
    pthread_mutex_lock(&self->lock);
    self->errors++;
    self->last_errno = error;
    pthread_mutex_unlock(&self->lock);
}

/* A client, with the start of a frame it had sent (a reload hands these over); 0 when out of memory. */
static int add_connection(Reader *self, int fd, const char *pending, size_t length) {
    if (self->connection_count == self->connection_room) {
        int room = self->connection_room ? 2 * self->connection_room : 8;
        Connection *grown = realloc(self->connections, sizeof *grown * (size_t)room);
        if (grown == NULL) return 0;
        self->connections = grown;
        self->connection_room = room;
    }
    Connection connection = {.fd = fd};
    if (length) {
        if ((connection.data = malloc(length)) == NULL) return 0;
        memcpy(connection.data, pending, length);
        connection.used = connection.size = length;
    }
    self->connections[self->connection_count++] = connection;
    return 1;
}

/* Forget client `index` (the last one takes its place), closing its socket unless it was handed over. */
static void remove_connection(Reader *self, int index, int close_it) {
    if (close_it) close(self->connections[index].fd);
    free(self->connections[index].data);
    self->connections[index] = self->connections[--self->connection_count];
}

/* Queue each whole frame of a client's bytes and keep the rest; -1 when it announced a frame over MAX_FRAME. */
static int cut_frames(Reader *self, Connection *client) {
    size_t offset = 0;
    int result = 0;
    pthread_mutex_lock(&self->lock);
    self->last_data = now_seconds();
    while (client->used - offset >= sizeof(uint32_t)) {
        uint32_t length;
        memcpy(&length, client->data + offset, sizeof length);
        length = le32toh(length);
        if (length > MAX_FRAME) {
            self->errors++;
            self->last_errno = EMSGSIZE;
            result = -1;
            break;
        }
        if (client->used - offset - sizeof length < length) break;
        uint32_t kept = length;
        if (kept > self->max_size) {
            kept = (uint32_t)self->max_size;
            self->truncated++;
        }
        if (!enqueue(self, client->data + offset + sizeof length, kept, 0, 0)) self->dropped++;
        offset += sizeof length + length;
    }
    pthread_mutex_unlock(&self->lock);
    memmove(client->data, client->data + offset, client->used - offset);
    client->used -= offset;
    if (client->used == 0 && client->size > KEEP_BYTES) {  /* a long frame is over: give its memory back */
        free(client->data);
        client->data = NULL;
        client->size = 0;
    }
    return result;
}

/* Read what a client wrote: 1 when it wrote, 0 when it has nothing more for now, -1 when it is gone (closed,
 * broken, or a frame too long). */
static int read_client(Reader *self, Connection *client) {
    if (client->size - client->used < READ_BYTES) {
        size_t size = client->size * 2 > client->used + READ_BYTES ? client->size * 2 : client->used + READ_BYTES;
        char *grown = realloc(client->data, size);
        if (grown == NULL) {
            note_error(self, ENOMEM);
            return -1;
        }
        client->data = grown;
        client->size = size;
    }
    ssize_t got = read(client->fd, client->data + client->used, client->size - client->used);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
    if (got <= 0) {
        if (got < 0 || client->used) note_error(self, got < 0 ? errno : ECONNABORTED);  /* a frame cut short */
        return -1;
    }
    client->used += (size_t)got;
    return cut_frames(self, client) == 0 ? 1 : -1;
}

static void accept_clients(Reader *self) {
    for (;;) {
        int fd = accept4(self->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                note_error(self, errno);
                struct timespec pause = {0, 10 * 1000 * 1000};  /* the client waits in the backlog meanwhile */
                nanosleep(&pause, NULL);
            }
            return;
        }
        if (!add_connection(self, fd, NULL, 0)) {
            note_error(self, ENOMEM);
            close(fd);
        }
    }
}

static void *serve_stream(void *argument) {
    Reader *self = ((Drainer *)argument)->reader;
    pthread_setname_np(pthread_self(), "relay-reader");
    struct pollfd *waits = NULL;
    int room = 0;
    double first_waiting = 0;
    while (!__atomic_load_n(&self->stopping, __ATOMIC_ACQUIRE)) {
        int waited = wait_for_room(self);
        if (waited < 0) break;
        if (waited) first_waiting = 0;
        int count = self->connection_count + 2;
        if (count > room) {
            struct pollfd *grown = realloc(waits, sizeof *grown * (size_t)(count * 2));
            if (grown == NULL) break;
            waits = grown;
            room = count * 2;
        }
        waits[0] = (struct pollfd){.fd = self->stop_fd, .events = POLLIN};
        waits[1] = (struct pollfd){.fd = self->fd, .events = POLLIN};
        for (int i = 0; i < self->connection_count; i++) {
            waits[2 + i] = (struct pollfd){.fd = self->connections[i].fd, .events = POLLIN};
        }
        struct timespec timeout;
        if (ppoll(waits, (nfds_t)count, sleep_limit(self, &first_waiting, &timeout), NULL) < 0) {
            if (errno == EINTR) continue;
            note_error(self, errno);
            break;
        }
        if (waits[0].revents) break;
        size_t before = self->queued_datagrams;  /* only this thread adds to it; a take may empty it: compare != */
        for (int i = count - 3; i >= 0; i--) {  /* from the last: a removed client's place takes one already read */
            if (waits[2 + i].revents && read_client(self, &self->connections[i]) < 0) remove_connection(self, i, 1);
        }
        if (waits[1].revents) accept_clients(self);
        pthread_mutex_lock(&self->lock);
        int queued = self->queued_datagrams != before;
        pthread_mutex_unlock(&self->lock);
        if (queued) settle(self, &first_waiting);
    }
    free(waits);
    return NULL;
}


static void stop_thread(Reader *self);

/* The clients a reload handed over: [(fd, the start of a frame), ...], made non-blocking. */
static int adopt_connections(Reader *self, PyObject *connections) {
    if (connections == NULL || connections == Py_None) return 0;
    PyObject *items = PySequence_Fast(connections, "connections must be a sequence of (fd, bytes)");
    if (items == NULL) return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(items); i++) {
        int fd;
        const char *pending;
        Py_ssize_t length;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(items, i), "iy#", &fd, &pending, &length)) {
            Py_DECREF(items);
            return -1;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        if (!add_connection(self, fd, pending, (size_t)length)) {
            Py_DECREF(items);
            PyErr_NoMemory();
            return -1;
        }
    }
    Py_DECREF(items);
    return 0;
}


static int Reader_init(Reader *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"fd", "max_size", "queue_bytes", "threads", "stream", "connections", "credentials",
                               NULL};
    int fd, threads = 1, stream = 0, credentials = 0;
    Py_ssize_t max_size, queue_bytes;
    PyObject *connections = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "inn|ipOp", keywords, &fd, &max_size, &queue_bytes, &threads,
                                     &stream, &connections, &credentials)) {
        return -1;
    }
    if (self->started) {
        PyErr_SetString(PyExc_RuntimeError, "a Reader is started once");
        return -1;
    }
    if (max_size < 1 || max_size > (1 << 24) || queue_bytes < 0 || threads < 1 || threads > MAX_THREADS) {
        PyErr_SetString(PyExc_ValueError, "max_size must be 1..16 MiB, queue_bytes >= 0 and threads 1 or 2");
        return -1;
    }
    if (stream && (threads != 1 || adopt_connections(self, connections) < 0)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "a stream socket has one thread");
        return -1;
    }
    self->stream = stream;
    self->credentials = credentials && !stream;
    self->fd = fd;
    self->max_size = (size_t)max_size;
    self->queue_bytes = (size_t)queue_bytes;
    self->wakeup_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->wakeup_fd < 0 || self->stop_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->room, NULL);
    for (int i = 0; i < threads; i++) {
        self->drainers[i] = (Drainer){.reader = self, .index = i};
        self->threads = threads;  /* read by the threads: set before the first starts */
        int failed = pthread_create(&self->drainers[i].thread, NULL, stream ? serve_stream : drain,
                                    &self->drainers[i]);
        if (failed) {
            self->threads = i;
            self->started = i > 0;
            stop_thread(self);
            errno = failed;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        self->started = 1;
    }
    return 0;
}

static void stop_thread(Reader *self) {
    if (!self->started) return;
    __atomic_store_n(&self->stopping, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&self->lock);
    pthread_cond_broadcast(&self->room);
    pthread_mutex_unlock(&self->lock);
    uint64_t one = 1;
    ssize_t written = write(self->stop_fd, &one, sizeof one);
    (void)written;
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < self->threads; i++) pthread_join(self->drainers[i].thread, NULL);
    Py_END_ALLOW_THREADS
    self->started = 0;
}

static PyObject *Reader_stop(Reader *self, PyObject *unused) {
    stop_thread(self);
    Py_RETURN_NONE;
}

/* The slice from `at` (`count` datagrams, `bytes` of them) as one bytes, joined with "\n" as the Agent's packet
 * assembler joins them: one copy and one object, where a list costs an object a datagram and the join a copy more.
 * NULL without an error when a datagram starts with `mark` (the loss probe's, which the caller strips). */
static PyObject *joined_slice(Reader *self, size_t at, size_t count, size_t bytes, const char *mark,
                              Py_ssize_t mark_length) {
    size_t header = sizeof(uint32_t);
    for (size_t i = 0, scan = at; mark_length > 0 && i < count; i++) {
        uint32_t length;
        memcpy(&length, self->pending.data + scan, sizeof length);
        if (length >= (size_t)mark_length && memcmp(self->pending.data + scan + header, mark, mark_length) == 0)
            return NULL;
        scan += header + length;
    }
    PyObject *joined = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(bytes + (count ? count - 1 : 0)));
    if (joined == NULL) return NULL;
    char *out = PyBytes_AS_STRING(joined);
    for (size_t i = 0; i < count; i++) {
        uint32_t length;
        memcpy(&length, self->pending.data + at, sizeof length);
        if (i > 0) *out++ = '\n';
        memcpy(out, self->pending.data + at + header, length);
        out += length;
        at += header + length;
    }
    return joined;
}

static PyObject *Reader_take(Reader *self, PyObject *args) {
    Py_ssize_t limit, mark_length = 0;
    int join = 0;
    const char *mark = NULL;
    if (!PyArg_ParseTuple(args, "n|py#", &limit, &join, &mark, &mark_length)) return NULL;
    uint64_t ignored;
    ssize_t cleared = read(self->wakeup_fd, &ignored, sizeof ignored);
    (void)cleared;  /* EAGAIN: nothing to clear */
    unsigned long long truncated = 0, errors = 0;
    if (self->pending_offset >= self->pending.used) {  /* the last slice was handed out: take the queue */
        pthread_mutex_lock(&self->lock);
        Buffer empty = self->pending;
        empty.used = 0;
        self->pending = self->queue;
        self->queue = empty;  /* its memory serves the thread again */
        self->pending_bytes = self->queued_bytes;
        truncated = self->truncated;
        self->queued_datagrams = self->queued_bytes = 0;
        self->truncated = 0;
        self->woken = 0;
        pthread_cond_broadcast(&self->room);
        pthread_mutex_unlock(&self->lock);
        self->pending_offset = 0;
    }
    /* One slice of about `limit` bytes (one datagram at least): a working set that stays in the CPU's caches. */
    size_t offset = self->pending_offset, count = 0, bytes = 0;
    size_t header = sizeof(uint32_t) + (self->credentials ? sizeof(int32_t) : 0);
    while (offset < self->pending.used && (count == 0 || bytes < (size_t)limit)) {
        uint32_t length;
        memcpy(&length, self->pending.data + offset, sizeof length);
        offset += header + length;
        bytes += length;
        count++;
    }
    PyObject *datagrams = NULL;
    if (join && !self->credentials) {
        datagrams = joined_slice(self, self->pending_offset, count, bytes, mark, mark_length);
        if (datagrams == NULL && PyErr_Occurred()) return NULL;
    }
    int listed = datagrams == NULL;
    if (listed) datagrams = PyList_New((Py_ssize_t)count);
    PyObject *pids = self->credentials ? PyList_New((Py_ssize_t)count) : Py_NewRef(Py_None);
    if (pids == NULL) Py_CLEAR(datagrams);
    for (size_t i = 0, at = self->pending_offset; listed && datagrams != NULL && i < count; i++) {
        uint32_t length;
        int32_t pid = 0;
        memcpy(&length, self->pending.data + at, sizeof length);
        if (self->credentials) memcpy(&pid, self->pending.data + at + sizeof length, sizeof pid);
        PyObject *datagram = PyBytes_FromStringAndSize(self->pending.data + at + header, length);
        PyObject *sender = self->credentials ? PyLong_FromLong(pid) : NULL;
        if (datagram == NULL || (self->credentials && sender == NULL)) {
            Py_XDECREF(datagram);
            Py_CLEAR(datagrams);
            break;
        }
        PyList_SET_ITEM(datagrams, (Py_ssize_t)i, datagram);
        if (sender != NULL) PyList_SET_ITEM(pids, (Py_ssize_t)i, sender);
        at += header + length;
    }
    if (datagrams == NULL) {
        Py_XDECREF(pids);
        return NULL;
    }
    self->pending_offset = offset;
    self->pending_bytes -= bytes;
    pthread_mutex_lock(&self->lock);
    errors = self->errors;  /* not of these datagrams: every take reports what happened since the last */
    self->errors = 0;
    int more = self->pending_offset < self->pending.used || self->queued_datagrams > 0;
    if (!more && self->queue.size > KEEP_BYTES) buffer_release(&self->queue);  /* drained: a burst is over */
    pthread_mutex_unlock(&self->lock);
    if (!more && self->pending.size > KEEP_BYTES) {  /* the thread never touches `pending`: no lock needed */
        buffer_release(&self->pending);
        self->pending_offset = 0;
    }
    return Py_BuildValue("(NKKONn)", datagrams, truncated, errors, more ? Py_True : Py_False, pids, (Py_ssize_t)count);
}

static PyObject *Reader_get_queued_bytes(Reader *self, void *closure) {
    pthread_mutex_lock(&self->lock);
    size_t bytes = self->queued_bytes + self->pending_bytes;
    pthread_mutex_unlock(&self->lock);
    return PyLong_FromSize_t(bytes);
}

static PyObject *Reader_get_buffer_bytes(Reader *self, void *closure) {
    pthread_mutex_lock(&self->lock);
    size_t bytes = self->queue.size + self->pending.size;
    pthread_mutex_unlock(&self->lock);
    return PyLong_FromSize_t(bytes);
}

static PyObject *Reader_get_dropped(Reader *self, void *closure) {
    pthread_mutex_lock(&self->lock);
    unsigned long long dropped = self->dropped;
    pthread_mutex_unlock(&self->lock);
    return PyLong_FromUnsignedLongLong(dropped);
}

static PyObject *Reader_get_last_error(Reader *self, void *closure) {
    pthread_mutex_lock(&self->lock);
    int error = self->last_errno;
    pthread_mutex_unlock(&self->lock);
    return PyUnicode_FromString(error ? strerror(error) : "");
}

static PyObject *Reader_hand_over(Reader *self, PyObject *unused) {
    if (self->started) {
        PyErr_SetString(PyExc_RuntimeError, "stop the Reader before handing its clients over");
        return NULL;
    }
    PyObject *handed = PyList_New(0);
    while (handed != NULL && self->connection_count > 0) {
        Connection *client = &self->connections[self->connection_count - 1];
        PyObject *item = Py_BuildValue("(iy#)", client->fd, client->data ? client->data : "", (Py_ssize_t)client->used);
        if (item == NULL || PyList_Append(handed, item) < 0) Py_CLEAR(handed);
        Py_XDECREF(item);
        if (handed != NULL) remove_connection(self, self->connection_count - 1, 0);
    }
    return handed;
}

/* At stop, after the thread: the clients waiting to be accepted, and what every client has written, queued. */
static PyObject *Reader_read_clients(Reader *self, PyObject *unused) {
    if (self->started) {
        PyErr_SetString(PyExc_RuntimeError, "stop the Reader before reading its clients");
        return NULL;
    }
    if (self->stream) accept_clients(self);
    for (int i = self->connection_count - 1; i >= 0; i--) {
        int result;
        while ((result = read_client(self, &self->connections[i])) > 0) continue;
        if (result < 0) remove_connection(self, i, 1);
    }
    Py_RETURN_NONE;
}

static PyObject *Reader_close_connections(Reader *self, PyObject *unused) {
    if (self->started) {
        PyErr_SetString(PyExc_RuntimeError, "stop the Reader before closing its clients");
        return NULL;
    }
    while (self->connection_count > 0) {
        if (self->connections[self->connection_count - 1].used) note_error(self, ECONNABORTED);  /* a cut frame */
        remove_connection(self, self->connection_count - 1, 1);
    }
    Py_RETURN_NONE;
}

static PyObject *Reader_get_last_data(Reader *self, void *closure) {
    pthread_mutex_lock(&self->lock);
    double last = self->last_data;
    pthread_mutex_unlock(&self->lock);
    return PyFloat_FromDouble(last);
}


static void Reader_dealloc(Reader *self) {
    stop_thread(self);
    while (self->connection_count > 0) remove_connection(self, self->connection_count - 1, 1);
    free(self->connections);
    if (self->wakeup_fd > 0) close(self->wakeup_fd);
    if (self->stop_fd > 0) close(self->stop_fd);
    buffer_release(&self->queue);
    buffer_release(&self->pending);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Reader_methods[] = {
    {"take", (PyCFunction)Reader_take, METH_VARARGS, "A slice of the queue: (datagrams, truncated, errors, more)."},
    {"stop", (PyCFunction)Reader_stop, METH_NOARGS, "End the thread; what it queued stays for a last take."},
    {"hand_over", (PyCFunction)Reader_hand_over, METH_NOARGS, "After stop: [(fd, unfinished frame)], let go of."},
    {"read_clients", (PyCFunction)Reader_read_clients, METH_NOARGS, "After stop: queue what the clients wrote."},
    {"close_connections", (PyCFunction)Reader_close_connections, METH_NOARGS, "After stop: close the clients."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Reader_members[] = {
    {"wakeup_fd", T_INT, offsetof(Reader, wakeup_fd), READONLY, "readable when datagrams wait"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Reader_getset[] = {
    {"queued_bytes", (getter)Reader_get_queued_bytes, NULL, "bytes of datagrams waiting for a take", NULL},
    {"buffer_bytes", (getter)Reader_get_buffer_bytes, NULL, "bytes mapped for the queue's two buffers", NULL},
    {"dropped", (getter)Reader_get_dropped, NULL, "datagrams dropped because the queue was full", NULL},
    {"last_error", (getter)Reader_get_last_error, NULL, "the last read error, or ''", NULL},
    {"last_data", (getter)Reader_get_last_data, NULL, "when a stream client last wrote (monotonic seconds)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay._reader.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A datagram socket drained by a native thread into a bounded queue.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
    .tp_members = Reader_members,
    .tp_getset = Reader_getset,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "relay._reader", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__reader(void) {
    if (PyType_Ready(&ReaderType) < 0) return NULL;
    PyObject *created = PyModule_Create(&module);
    if (created == NULL) return NULL;
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(created, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(created);
        return NULL;
    }
    return created;
}

#else  /* not Linux: no module, so relay/runtime/listen.py reads the sockets on the event loop */
#error "relay._reader needs recvmmsg and eventfd (Linux)"
#endif

/*
 * loadgen.c -- request/response (ping-pong) load generator for bench/echo.py.
 *
 * Not part of the package: bench/echo.py compiles it with `cc -O2` into
 * bench/.build/ when the binary is missing or older than this file.
 *
 * Client mode (default):
 *
 *   loadgen --port P [--conns C] [--size S] [--seconds T] [--warmup W]
 *           [--max-requests N] [--idle I] [--server-pid PID] [--timeout X]
 *
 *   Opens C connections to 127.0.0.1:P (TCP_NODELAY). Each connection sends
 *   S bytes, waits until S bytes have come back (and checks they are the bytes
 *   it sent), and repeats. Requests completed during the first W seconds are
 *   not counted (warm-up); then requests are counted for T seconds, or until N
 *   requests have been counted. One JSON object is printed on stdout.
 *
 *   --idle I opens I extra connections first, before the active ones. Each is
 *   confirmed with one 1-byte round trip (so the server has certainly accepted
 *   it and is waiting in recv on it), then it stays silent until exit. They
 *   are opened in batches of 500 so the server's accept backlog never
 *   overflows.
 *
 *   --interval X: also report requests per second in each X-second slice
 *   since the start (warm-up included), as "interval_rps".
 *
 *   --server-pid PID: the server's CPU use (utime+stime from /proc/PID/stat)
 *   over the measured window is reported too, next to our own, and so is
 *   "other_cpu": the CPUs the rest of the machine kept busy meanwhile (from
 *   /proc/stat), which tells whether something else disturbed the figure.
 *
 *   Everything is bounded: the run ends after W+T seconds of ping-pong, and
 *   the whole program gives up after --timeout seconds (default W+T+60),
 *   reporting an error, if the server stops answering.
 *
 * Hold mode (bench/load.py):
 *
 *   loadgen --port P --hold N [--size S] [--timeout X] [--hold-seconds H]
 *
 *   Opens N connections the way --idle does (each confirmed by a 1-byte
 *   round trip: "connect_seconds" is the time until all N are connected and
 *   served). Then, with all N open: every connection sends S bytes at once
 *   ("burst": each one's round trip counts from its own send), and then each
 *   one in turn sends S bytes and waits for them ("single": one request
 *   in flight). Echoes are checked. One JSON object is printed on stdout, and
 *   the connections stay open until stdin reaches EOF or has a line, or for
 *   at most H seconds (default 60), so the bench can look at the server
 *   while they are held.
 *
 * Cycles mode (bench/load.py):
 *
 *   loadgen --port P --cycles N [--conns C] [--size S] [--timeout X]
 *
 *   N times: connect, send S bytes, wait until they have come back (checked),
 *   close; C of these cycles are in flight at once. One JSON object on
 *   stdout: cycles completed, seconds, cycles per second.
 *
 *   Both modes stop with an error in their JSON after --timeout seconds
 *   (default 60) if the server stops answering; S is at most 65536.
 *
 * HTTP mode (bench/http.py):
 *
 *   loadgen --port P --http PATH [--conns C] [--seconds T] [--warmup W]
 *           [--server-pid PID] [--timeout X]
 *
 *   C keep-alive connections each send "GET PATH HTTP/1.1", read the whole
 *   response (status 200 required; the body's length from Content-Length,
 *   no chunked encoding, nothing read past the response), and repeat, counted
 *   as in client mode; after a response with "Connection: close" the next
 *   request goes on a new connection. The JSON has "body_bytes", "mib_per_s"
 *   and "reconnects" besides the client mode's fields.
 *
 * Server mode (reference ceiling):
 *
 *   loadgen --serve [--max-seconds N]
 *
 *   A minimal single-threaded epoll echo server on 127.0.0.1, port 0; prints
 *   the port on stdout, then echoes until killed, until its stdin reaches EOF
 *   (the bench holds the write end, so the server dies with the bench), or
 *   after N seconds.
 *
 * Linux only (epoll).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 100000
#define MAX_SIZE (16 * 1024 * 1024)
#define MAX_LAT_SAMPLES (4 * 1024 * 1024)
#define IDLE_BATCH 500
#define MAX_ECHO 65536 /* message size limit of --hold and --cycles */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6
         + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

/* utime+stime of another process in seconds, or -1. */
static double proc_cpu(long pid)
{
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may contain spaces */
    if (!p)
        return -1;
    p++;
    /* after ')': state(3) ppid pgrp session tty tpgid flags minflt cminflt
       majflt cmajflt utime(14) stime(15) */
    unsigned long ut = 0, st = 0;
    int field = 2;
    char *tok = strtok(p, " ");
    while (tok) {
        field++;
        if (field == 14)
            ut = strtoul(tok, NULL, 10);
        else if (field == 15) {
            st = strtoul(tok, NULL, 10);
            break;
        }
        tok = strtok(NULL, " ");
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* CPU seconds all CPUs spent busy (not idle or iowait) since boot, from
   /proc/stat, or -1. */
static double system_busy(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    unsigned long long v[10] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
                   &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 8)
        return -1;
    /* user nice system idle iowait irq softirq steal (guest counted in user) */
    unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6];
    return (double)busy / (double)sysconf(_SC_CLK_TCK);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static long nofile_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    return (long)rl.rlim_cur;
}

/* Exit with a JSON error unless `need` descriptors can be open at once. */
static void require_nofile(long need)
{
    if (nofile_limit() < need) {
        printf("{\"error\": \"RLIMIT_NOFILE %ld < %ld needed\"}\n", nofile_limit(), need);
        exit(2);
    }
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL, 0);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void die_json(const char *msg, int err)
{
    printf("{\"error\": \"%s%s%s\"}\n", msg, err ? ": " : "", err ? strerror(err) : "");
    fflush(stdout);
    exit(2);
}

/* Blocking connect to 127.0.0.1:port, then non-blocking + TCP_NODELAY. */
static int connect_one(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* Bound the blocking connect: SO_SNDTIMEO applies to connect(). */
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    struct timeval zero = {0, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof zero);
    set_nodelay(fd);
    set_nonblock(fd);
    return fd;
}

/* ------------------------------------------------------------------------ */
/* Reference echo server                                                     */

static int serve(long max_seconds)
{
    raise_nofile();
    if (max_seconds > 0)
        alarm((unsigned)max_seconds); /* never outlive a crashed bench */
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0;
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) || listen(lfd, SOMAXCONN)) {
        perror("bind/listen");
        return 1;
    }
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    set_nonblock(lfd);
    printf("%d\n", ntohs(sa.sin_port));
    fflush(stdout);

    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    /* Exit when stdin reaches EOF or hangs up (the bench holds its write end). */
    struct epoll_event sev = {.events = EPOLLIN, .data.fd = 0};
    int watch_stdin = epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev) == 0;
    static char buf[65536];
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == 0 && watch_stdin) {
                ssize_t r = read(0, buf, sizeof buf);
                if (r <= 0 && !(r < 0 && (errno == EAGAIN || errno == EINTR)))
                    return 0;
                continue;
            }
            if (fd == lfd) {
                for (;;) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0)
                        break;
                    set_nodelay(c);
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                close(fd);
                continue;
            }
            if (r < 0)
                continue;
            /* Echo everything; a ping-pong peer never overruns the socket
               buffer, so a short blocking-ish retry loop is enough here. */
            ssize_t off = 0;
            while (off < r) {
                ssize_t w = send(fd, buf + off, r - off, MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno == EAGAIN || errno == EINTR) {
                        struct timespec ts = {0, 10000};
                        nanosleep(&ts, NULL);
                        continue;
                    }
                    close(fd);
                    break;
                }
                off += w;
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Client                                                                    */

typedef struct {
    int fd;
    size_t sent, got;
    double t0;            /* request start */
    uint64_t seq;
    int want_out;         /* EPOLLOUT registered */
    unsigned char *out;   /* message being sent (seq stamped in) */
    unsigned char *in;    /* reply */
} conn_t;

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Print `"key": {"p50": .., "p90": .., "p99": .., "max": ..}` (microseconds)
   for the n samples in lat, which this sorts. */
static void print_latency(const char *key, float *lat, size_t n)
{
    double p50 = 0, p90 = 0, p99 = 0, pmax = 0;
    if (n > 0) {
        qsort(lat, n, sizeof(float), cmp_float);
        p50 = lat[(size_t)(0.50 * (n - 1))];
        p90 = lat[(size_t)(0.90 * (n - 1))];
        p99 = lat[(size_t)(0.99 * (n - 1))];
        pmax = lat[n - 1];
    }
    printf("\"%s\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"max\": %.1f}",
           key, p50, p90, p99, pmax);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --port P [--conns C] [--size S] [--seconds T] [--warmup W]\n"
            "               [--max-requests N] [--idle I] [--server-pid PID] [--timeout X]\n"
            "       loadgen --port P --hold N [--size S] [--timeout X] [--hold-seconds H]\n"
            "       loadgen --port P --cycles N [--conns C] [--size S] [--timeout X]\n"
            "       loadgen --port P --http PATH [--conns C] [--seconds T] [--warmup W]\n"
            "               [--server-pid PID] [--timeout X]\n"
            "       loadgen --serve [--max-seconds N]\n");
    exit(2);
}

/* Open `count` idle connections, confirming each with a 1-byte round trip. */
static int open_idle(int port, int count, int *fds, double deadline)
{
    int ep = epoll_create1(0);
    struct epoll_event evs[256];
    int opened = 0;
    while (opened < count) {
        int batch = count - opened < IDLE_BATCH ? count - opened : IDLE_BATCH;
        for (int i = 0; i < batch; i++) {
            int fd = connect_one(port);
            if (fd < 0)
                die_json("idle connect", errno);
            fds[opened + i] = fd;
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(opened + i)};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            if (send(fd, "i", 1, MSG_NOSIGNAL) != 1)
                die_json("idle send", errno);
        }
        int pending = batch;
        while (pending > 0) {
            if (now() > deadline)
                die_json("timeout while confirming idle connections", 0);
            int n = epoll_wait(ep, evs, 256, 100);
            for (int i = 0; i < n; i++) {
                int fd = fds[evs[i].data.u32];
                char c;
                ssize_t r = recv(fd, &c, 1, 0);
                if (r == 1) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                    pending--;
                } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    die_json("idle connection closed by server", r == 0 ? 0 : errno);
                }
            }
        }
        opened += batch;
    }
    close(ep);
    return opened;
}

/* ------------------------------------------------------------------------ */
/* Hold and cycles modes (bench/load.py)                                     */

/* The message both modes send: a fixed pattern, so that every echo is checked. */
static unsigned char *make_message(long size)
{
    unsigned char *msg = malloc((size_t)size);
    for (long k = 0; k < size; k++)
        msg[k] = (unsigned char)('A' + k % 26);
    return msg;
}

/* Send all of msg on a non-blocking socket, waiting for room with poll().
   0, or -1 with errno set (ETIMEDOUT past the deadline). */
static int send_message(int fd, const unsigned char *msg, long size, double deadline)
{
    long off = 0;
    while (off < size) {
        ssize_t w = send(fd, msg + off, (size_t)(size - off), MSG_NOSIGNAL);
        if (w > 0) {
            off += w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return -1;
        double left = deadline - now();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        poll(&p, 1, (int)(left * 1000) + 1);
    }
    return 0;
}

/* Read what has arrived of c's echo of msg. 1: complete; 0: more to come;
   -1: error (described in err). Never reads past the echo, so bytes the
   server should not have sent are caught by the next read. */
static int read_echo(conn_t *c, const unsigned char *msg, long size, char *err, size_t errlen)
{
    static unsigned char buf[MAX_ECHO];
    ssize_t r = recv(c->fd, buf, (size_t)size - c->got, 0);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (r <= 0) {
        snprintf(err, errlen, "recv: %s", r == 0 ? "connection closed by server" : strerror(errno));
        return -1;
    }
    if (memcmp(buf, msg + c->got, (size_t)r) != 0) {
        snprintf(err, errlen, "echoed bytes differ from the request");
        return -1;
    }
    c->got += (size_t)r;
    return c->got == (size_t)size;
}

/* One epoll_wait (up to wait_ms) over connections registered in ep (data.u32:
   index into cs), reading echoes; each completed round trip's time since its
   t0 goes into lat[*nlat]. Returns how many completed, or -1 after an error
   (described in err). */
static int poll_echoes(int ep, conn_t *cs, const unsigned char *msg, long size, float *lat,
                       size_t *nlat, int wait_ms, char *err, size_t errlen)
{
    struct epoll_event evs[512];
    int n = epoll_wait(ep, evs, 512, wait_ms);
    if (n < 0 && errno != EINTR) {
        snprintf(err, errlen, "epoll_wait: %s", strerror(errno));
        return -1;
    }
    int done = 0;
    for (int k = 0; k < n; k++) {
        conn_t *c = &cs[evs[k].data.u32];
        int st = read_echo(c, msg, size, err, errlen);
        if (st < 0)
            return -1;
        if (st > 0) {
            lat[(*nlat)++] = (float)((now() - c->t0) * 1e6);
            done++;
        }
    }
    return done;
}

/* poll_echoes until `pending` round trips have completed; returns how many
   did: fewer after an error or past the deadline (described in err). */
static int collect_echoes(int ep, conn_t *cs, int pending, const unsigned char *msg, long size,
                          float *lat, size_t *nlat, double deadline, char *err, size_t errlen)
{
    int done = 0;
    while (done < pending) {
        if (now() > deadline) {
            snprintf(err, errlen, "timeout: %d of %d echoes missing", pending - done, pending);
            break;
        }
        int n = poll_echoes(ep, cs, msg, size, lat, nlat, 100, err, errlen);
        if (n < 0)
            break;
        done += n;
    }
    return done;
}

/* Send the message on cs[i] and record when; on failure describe it in err. */
static int start_round_trip(conn_t *cs, int i, const unsigned char *msg, long size,
                            double deadline, char *err, size_t errlen)
{
    cs[i].got = 0;
    cs[i].t0 = now();
    if (send_message(cs[i].fd, msg, size, deadline) == 0)
        return 0;
    snprintf(err, errlen, "send: %s", strerror(errno));
    return -1;
}

static int hold(int port, int count, long size, double timeout, double hold_seconds)
{
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    require_nofile((long)count + 64);
    double deadline = now() + timeout;

    int *fds = calloc((size_t)count, sizeof(int));
    double t = now();
    open_idle(port, count, fds, deadline);
    double connect_s = now() - t;

    unsigned char *msg = make_message(size);
    conn_t *cs = calloc((size_t)count, sizeof(conn_t));
    int ep = epoll_create1(0);
    for (int i = 0; i < count; i++) {
        cs[i].fd = fds[i];
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    float *burst_lat = malloc(sizeof(float) * (size_t)count);
    float *single_lat = malloc(sizeof(float) * (size_t)count);
    size_t nburst = 0, nsingle = 0;
    char err[200] = "";

    /* All at once: every request is sent as fast as we can, replies that are
       already back read in between (so that the client's own send loop does
       not count as server latency). */
    double b0 = now();
    int sent = 0, burst_done = 0;
    while (sent < count && start_round_trip(cs, sent, msg, size, deadline, err, sizeof err) == 0) {
        sent++;
        int n = poll_echoes(ep, cs, msg, size, burst_lat, &nburst, 0, err, sizeof err);
        if (n < 0)
            break;
        burst_done += n;
    }
    if (!err[0])
        burst_done += collect_echoes(ep, cs, sent - burst_done, msg, size, burst_lat, &nburst,
                                     deadline, err, sizeof err);
    double burst_s = now() - b0;

    /* One at a time: a single request in flight, all the others held open. */
    int single_done = 0;
    for (int i = 0; i < count && !err[0]; i++) {
        if (start_round_trip(cs, i, msg, size, deadline, err, sizeof err) == 0)
            single_done += collect_echoes(ep, cs, 1, msg, size, single_lat, &nsingle, deadline, err,
                                       sizeof err);
    }

    printf("{\"mode\": \"hold\", \"conns\": %d, \"size\": %ld, \"connect_seconds\": %.6f, "
           "\"burst_served\": %d, \"burst_seconds\": %.6f, ",
           count, size, connect_s, burst_done, burst_s);
    print_latency("burst_latency_us", burst_lat, nburst);
    printf(", \"single_served\": %d, ", single_done);
    print_latency("single_latency_us", single_lat, nsingle);
    printf(", \"errors\": %d, \"error\": \"%s\"}\n", err[0] != 0, err);
    fflush(stdout);

    /* Keep every connection open until the bench has looked at the server. */
    if (!err[0]) {
        struct pollfd p = {.fd = 0, .events = POLLIN};
        poll(&p, 1, (int)(hold_seconds * 1000));
    }
    /* Exit closes every socket. */
    return err[0] ? 1 : 0;
}

/* Connect cs[i] afresh and send it the message: the start of one cycle. */
static int start_cycle(int ep, conn_t *cs, int i, int port, const unsigned char *msg, long size,
                       double deadline, char *err, size_t errlen)
{
    cs[i].fd = connect_one(port);
    if (cs[i].fd < 0) {
        snprintf(err, errlen, "connect: %s", strerror(errno));
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    return start_round_trip(cs, i, msg, size, deadline, err, errlen);
}

static int cycles(int port, long total, int conc, long size, double timeout)
{
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    require_nofile((long)conc + 64);
    double t0 = now(), deadline = t0 + timeout;
    unsigned char *msg = make_message(size);
    conn_t *cs = calloc((size_t)conc, sizeof(conn_t));
    int ep = epoll_create1(0);
    struct epoll_event evs[512];
    long started = 0, done = 0;
    char err[200] = "";

    for (int i = 0; i < conc && started < total; i++) {
        if (start_cycle(ep, cs, i, port, msg, size, deadline, err, sizeof err) != 0)
            break;
        started++;
    }
    while (done < started && !err[0]) {
        if (now() > deadline) {
            snprintf(err, sizeof err, "timeout: %ld of %ld cycles done", done, total);
            break;
        }
        int n = epoll_wait(ep, evs, 512, 100);
        if (n < 0 && errno != EINTR) {
            snprintf(err, sizeof err, "epoll_wait: %s", strerror(errno));
            break;
        }
        for (int k = 0; k < n && !err[0]; k++) {
            int i = (int)evs[k].data.u32;
            if (read_echo(&cs[i], msg, size, err, sizeof err) <= 0)
                continue;
            close(cs[i].fd); /* also leaves the epoll set */
            done++;
            if (started < total && start_cycle(ep, cs, i, port, msg, size, deadline, err,
                                               sizeof err) == 0)
                started++;
        }
    }
    double elapsed = now() - t0;
    printf("{\"mode\": \"cycles\", \"cycles\": %ld, \"concurrency\": %d, \"size\": %ld, "
           "\"seconds\": %.6f, \"rate\": %.1f, \"errors\": %d, \"error\": \"%s\"}\n",
           done, conc, size, elapsed, elapsed > 0 ? done / elapsed : 0.0, err[0] != 0, err);
    fflush(stdout);
    return err[0] ? 1 : 0;
}

/* The measured window: when it began, and the CPU clocks then. */
typedef struct {
    double t, cpu, srv, sys;
} window_t;

/* Read the clocks at time t (our CPU, the server's or -1, the machine's). */
static void window_mark(window_t *w, double t, long server_pid)
{
    w->t = t;
    w->cpu = self_cpu();
    w->srv = server_pid ? proc_cpu(server_pid) : -1;
    w->sys = system_busy();
}

/* From begin to end: the seconds, and the CPUs that we, the server (-1
   if unknown) and everything else (other processes, plus interrupt work
   charged to neither of us; -1 if unknown) kept busy. */
typedef struct {
    double seconds, loadgen_cpu, server_cpu, other_cpu;
} usage_t;

static usage_t window_usage(const window_t *begin, const window_t *end)
{
    usage_t u = {end->t - begin->t, 0.0, -1.0, -1.0};
    if (u.seconds <= 0)
        return u;
    u.loadgen_cpu = (end->cpu - begin->cpu) / u.seconds;
    if (begin->srv >= 0 && end->srv >= 0)
        u.server_cpu = (end->srv - begin->srv) / u.seconds;
    if (begin->sys >= 0 && end->sys >= 0 && u.server_cpu >= 0) {
        u.other_cpu = (end->sys - begin->sys) / u.seconds - u.server_cpu - u.loadgen_cpu;
        if (u.other_cpu < 0)
            u.other_cpu = 0;
    }
    return u;
}

/* ------------------------------------------------------------------------ */
/* HTTP keep-alive client                                                    */

#define HTTP_HEAD_MAX 8192
#define HTTP_BODY_CHUNK (1024 * 1024)

typedef struct {
    int fd;
    double t0;
    size_t head_len;      /* bytes of the response head read so far */
    long long body_left;  /* -1 while the head is incomplete */
    int closing;          /* the response said "Connection: close" */
    char head[HTTP_HEAD_MAX];
} http_conn_t;

/* The value of header `name` (lower case, with its colon) in a complete
   response head, or NULL. */
static const char *http_header(const char *head, const char *name)
{
    size_t len = strlen(name);
    for (const char *p = strstr(head, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n"))
        if (!strncasecmp(p + 2, name, len))
            return p + 2 + len + strspn(p + 2 + len, " ");
    return NULL;
}

/* Read what has arrived of c's response. 1: complete; 0: more to come; -1:
   error (described in err). *body gets the body bytes read. */
static int http_read(http_conn_t *c, long long *body, char *err, size_t errlen)
{
    static char chunk[HTTP_BODY_CHUNK];
    if (c->body_left < 0) {
        ssize_t r = recv(c->fd, c->head + c->head_len, HTTP_HEAD_MAX - 1 - c->head_len, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        if (r <= 0) {
            snprintf(err, errlen, "recv: %s", r == 0 ? "connection closed by server" : strerror(errno));
            return -1;
        }
        c->head_len += (size_t)r;
        c->head[c->head_len] = 0;
        char *end = strstr(c->head, "\r\n\r\n");
        if (!end) {
            if (c->head_len == HTTP_HEAD_MAX - 1) {
                snprintf(err, errlen, "response head longer than %d bytes", HTTP_HEAD_MAX);
                return -1;
            }
            return 0;
        }
        end[2] = 0;
        if (strncmp(c->head, "HTTP/1.1 200 ", 13) != 0) {
            snprintf(err, errlen, "status line: %.*s", (int)strcspn(c->head, "\r\n\"\\"), c->head);
            return -1;
        }
        const char *value = http_header(c->head, "content-length:");
        long long length = value ? atoll(value) : -1;
        value = http_header(c->head, "connection:");
        c->closing = value && !strncasecmp(value, "close", 5);
        if (length < 0) {
            snprintf(err, errlen, "response without Content-Length");
            return -1;
        }
        long long extra = (long long)c->head_len - (long long)(end + 4 - c->head);
        if (extra > length) {
            snprintf(err, errlen, "more bytes than the response holds");
            return -1;
        }
        *body += extra;
        c->body_left = length - extra;
        return c->body_left == 0;
    }
    size_t want = c->body_left < HTTP_BODY_CHUNK ? (size_t)c->body_left : HTTP_BODY_CHUNK;
    ssize_t r = recv(c->fd, chunk, want, 0);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (r <= 0) {
        snprintf(err, errlen, "recv: %s", r == 0 ? "connection closed by server" : strerror(errno));
        return -1;
    }
    *body += r;
    c->body_left -= r;
    return c->body_left == 0;
}

static int http_client(int port, int conns, const char *path, double seconds, double warmup,
                       long server_pid, double timeout)
{
    char request[1024];
    int rlen = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (rlen <= 0 || rlen >= (int)sizeof request)
        die_json("path too long", 0);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    require_nofile((long)conns + 64);
    http_conn_t *cs = calloc((size_t)conns, sizeof(http_conn_t));
    int ep = epoll_create1(0);
    for (int i = 0; i < conns; i++) {
        cs[i].fd = connect_one(port);
        if (cs[i].fd < 0)
            die_json("connect", errno);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    float *lat = malloc(sizeof(float) * MAX_LAT_SAMPLES);
    size_t nlat = 0;
    long long counted = 0, warm_done = 0, body = 0, ignored = 0, reconnects = 0;
    int errors = 0;
    char errmsg[200] = "";
    double t_start = now(), hard_deadline = t_start + timeout;
    double t_measure = t_start + warmup, t_end = t_measure + seconds;
    int measuring = warmup <= 0;
    window_t begin, end;
    window_mark(&begin, t_start, server_pid);
    for (int i = 0; i < conns && !errors; i++) {
        cs[i].t0 = t_start;
        cs[i].body_left = -1;
        if (send_message(cs[i].fd, (const unsigned char *)request, rlen, hard_deadline) != 0) {
            errors++;
            snprintf(errmsg, sizeof errmsg, "send: %s", strerror(errno));
        }
    }
    struct epoll_event evs[512];
    while (!errors) {
        int n = epoll_wait(ep, evs, 512, 50);
        double t = now();
        if (n < 0 && errno != EINTR) {
            errors++;
            snprintf(errmsg, sizeof errmsg, "epoll_wait: %s", strerror(errno));
            break;
        }
        if (!measuring && t >= t_measure) {
            measuring = 1;
            window_mark(&begin, t, server_pid);
        }
        if (measuring && t >= t_end)
            break;
        if (t > hard_deadline) {
            errors++;
            snprintf(errmsg, sizeof errmsg, "timeout: server stopped answering");
            break;
        }
        for (int k = 0; k < n && !errors; k++) {
            http_conn_t *c = &cs[evs[k].data.u32];
            int st = http_read(c, measuring ? &body : &ignored, errmsg, sizeof errmsg);
            if (st < 0) {
                errors++;
                break;
            }
            if (st == 0)
                continue;
            if (measuring) {
                counted++;
                if (nlat < MAX_LAT_SAMPLES)
                    lat[nlat++] = (float)((t - c->t0) * 1e6);
            } else {
                warm_done++;
            }
            c->t0 = t;
            c->head_len = 0;
            c->body_left = -1;
            if (c->closing) {
                /* As a browser or wrk does: a new connection for the next request. */
                close(c->fd);
                c->fd = connect_one(port);
                if (c->fd < 0) {
                    errors++;
                    snprintf(errmsg, sizeof errmsg, "reconnect: %s", strerror(errno));
                    break;
                }
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[k].data.u32};
                epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
                reconnects++;
            }
            if (send_message(c->fd, (const unsigned char *)request, rlen, hard_deadline) != 0) {
                errors++;
                snprintf(errmsg, sizeof errmsg, "send: %s", strerror(errno));
            }
        }
    }
    window_mark(&end, now(), server_pid);
    usage_t u = window_usage(measuring ? &begin : &end, &end);
    double elapsed = u.seconds;
    printf("{\"conns\": %d, \"path\": \"%s\", \"warmup\": %.3f, \"warmup_requests\": %lld, "
           "\"seconds\": %.6f, \"requests\": %lld, \"rps\": %.1f, \"body_bytes\": %lld, "
           "\"mib_per_s\": %.2f, \"reconnects\": %lld, ",
           conns, path, warmup, warm_done, elapsed, counted, elapsed > 0 ? counted / elapsed : 0.0,
           body, elapsed > 0 ? body / elapsed / 1048576.0 : 0.0, reconnects);
    print_latency("latency_us", lat, nlat);
    printf(", \"loadgen_cpu\": %.3f, \"server_cpu\": %.3f, \"other_cpu\": %.3f, "
           "\"errors\": %d, \"error\": \"%s\"}\n",
           u.loadgen_cpu, u.server_cpu, u.other_cpu, errors, errmsg);
    fflush(stdout);
    return errors ? 1 : 0;
}

int main(int argc, char **argv)
{
    int port = 0, conns = 1, idle = 0;
    long size = 64;
    double seconds = 1.5, warmup = 0.3, timeout = -1;
    long long max_requests = 0;
    long server_pid = 0;
    double interval = 0;

    int serve_mode = 0;
    long max_seconds = 0;
    long hold_count = 0, cycle_count = 0;
    double hold_seconds = 60;
    const char *http_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--serve")) {
            serve_mode = 1;
            continue;
        }
        if (!v)
            usage();
        if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--conns")) conns = atoi(v);
        else if (!strcmp(a, "--size")) size = atol(v);
        else if (!strcmp(a, "--seconds")) seconds = atof(v);
        else if (!strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--max-requests")) max_requests = atoll(v);
        else if (!strcmp(a, "--idle")) idle = atoi(v);
        else if (!strcmp(a, "--server-pid")) server_pid = atol(v);
        else if (!strcmp(a, "--timeout")) timeout = atof(v);
        else if (!strcmp(a, "--max-seconds")) max_seconds = atol(v);
        else if (!strcmp(a, "--interval")) interval = atof(v);
        else if (!strcmp(a, "--hold")) hold_count = atol(v);
        else if (!strcmp(a, "--cycles")) cycle_count = atol(v);
        else if (!strcmp(a, "--hold-seconds")) hold_seconds = atof(v);
        else if (!strcmp(a, "--http")) http_path = v;
        else usage();
        i++;
    }
    if (serve_mode)
        return serve(max_seconds);
    if (http_path) {
        if (port <= 0 || port > 65535 || conns < 1 || conns > MAX_CONNS || seconds <= 0
            || seconds > 600 || warmup < 0 || warmup > 600 || http_path[0] != '/')
            usage();
        return http_client(port, conns, http_path, seconds, warmup, server_pid,
                           timeout > 0 ? timeout : warmup + seconds + 60);
    }
    if (hold_count || cycle_count) {
        if (port <= 0 || port > 65535 || size < 1 || size > MAX_ECHO || conns < 1
            || conns > MAX_CONNS || hold_count < 0 || hold_count > MAX_CONNS || cycle_count < 0
            || (hold_count && cycle_count) || hold_seconds < 0 || hold_seconds > 3600)
            usage();
        if (timeout <= 0)
            timeout = 60;
        return hold_count ? hold(port, (int)hold_count, size, timeout, hold_seconds)
                          : cycles(port, cycle_count, conns, size, timeout);
    }
    if (port <= 0 || port > 65535 || conns < 1 || conns > MAX_CONNS || size < 1
        || size > MAX_SIZE || idle < 0 || idle > MAX_CONNS || seconds <= 0
        || seconds > 600 || warmup < 0 || warmup > 600)
        usage();
    if (timeout <= 0)
        timeout = warmup + seconds + 60;

    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    require_nofile((long)conns + idle + 64);
    double t_begin = now();
    double hard_deadline = t_begin + timeout;

    /* Idle connections first. */
    int *idle_fds = NULL;
    double idle_open_s = 0;
    if (idle > 0) {
        idle_fds = calloc((size_t)idle, sizeof(int));
        double t = now();
        open_idle(port, idle, idle_fds, hard_deadline);
        idle_open_s = now() - t;
    }

    /* Active connections. */
    conn_t *cs = calloc((size_t)conns, sizeof(conn_t));
    int ep = epoll_create1(0);
    for (int i = 0; i < conns; i++) {
        conn_t *c = &cs[i];
        c->fd = connect_one(port);
        if (c->fd < 0)
            die_json("connect", errno);
        c->out = malloc((size_t)size);
        c->in = malloc((size_t)size);
        for (long k = 0; k < size; k++)
            c->out[k] = (unsigned char)('a' + (i + k) % 26);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }

    float *lat = malloc(sizeof(float) * MAX_LAT_SAMPLES);
    size_t nlat = 0;
    long long counted = 0, warm_done = 0;
    int errors = 0;
    char errmsg[200] = "";

    double t_start = now();
    double t_measure = t_start + warmup;
    double t_end = t_measure + seconds;
    int measuring = warmup <= 0;
    window_t begin, end;
    window_mark(&begin, t_start, server_pid);
    int stop = 0;

/* Start (or continue) sending the current request of c. */
#define PUMP_SEND(c, idx)                                                          \
    do {                                                                           \
        while ((c)->sent < (size_t)size) {                                         \
            ssize_t w = send((c)->fd, (c)->out + (c)->sent, (size_t)size - (c)->sent, \
                             MSG_NOSIGNAL);                                        \
            if (w > 0) { (c)->sent += (size_t)w; continue; }                       \
            if (w < 0 && (errno == EAGAIN || errno == EINTR)) break;               \
            errors++;                                                              \
            snprintf(errmsg, sizeof errmsg, "send: %s", strerror(errno));          \
            stop = 1;                                                              \
            break;                                                                 \
        }                                                                          \
        int want = (c)->sent < (size_t)size;                                       \
        if (want != (c)->want_out) {                                               \
            struct epoll_event e2 = {.events = EPOLLIN | (want ? EPOLLOUT : 0),    \
                                     .data.u32 = (uint32_t)(idx)};                 \
            epoll_ctl(ep, EPOLL_CTL_MOD, (c)->fd, &e2);                            \
            (c)->want_out = want;                                                  \
        }                                                                          \
    } while (0)

#define START_REQUEST(c, idx, t)                                                   \
    do {                                                                           \
        (c)->seq++;                                                                \
        if (size >= 8) memcpy((c)->out, &(c)->seq, 8);                             \
        (c)->sent = 0; (c)->got = 0; (c)->t0 = (t);                                \
        PUMP_SEND(c, idx);                                                         \
    } while (0)

    for (int i = 0; i < conns; i++)
        START_REQUEST(&cs[i], i, t_start);

    /* --interval X: requests completed per X seconds from the very start
       (warm-up included), for looking at warm-up effects. */
    enum { MAX_IV = 10000 };
    long long *iv = interval > 0 ? calloc(MAX_IV, sizeof(long long)) : NULL;
    int niv = 0;

    struct epoll_event evs[512];
    while (!stop) {
        int n = epoll_wait(ep, evs, 512, 50);
        double t = now();
        if (n < 0 && errno != EINTR) {
            errors++;
            snprintf(errmsg, sizeof errmsg, "epoll_wait: %s", strerror(errno));
            break;
        }
        if (!measuring && t >= t_measure) {
            measuring = 1;
            window_mark(&begin, t, server_pid);
        }
        if (measuring && t >= t_end)
            break;
        if (t > hard_deadline) {
            errors++;
            snprintf(errmsg, sizeof errmsg, "timeout: server stopped answering");
            break;
        }
        for (int k = 0; k < n && !stop; k++) {
            int idx = (int)evs[k].data.u32;
            conn_t *c = &cs[idx];
            if (evs[k].events & EPOLLOUT)
                PUMP_SEND(c, idx);
            if (!(evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                continue;
            ssize_t r = recv(c->fd, c->in + c->got, (size_t)size - c->got, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0) {
                errors++;
                snprintf(errmsg, sizeof errmsg, "recv: %s",
                         r == 0 ? "connection closed by server" : strerror(errno));
                stop = 1;
                break;
            }
            c->got += (size_t)r;
            if (c->got > c->sent) {
                errors++;
                snprintf(errmsg, sizeof errmsg, "received more than was sent");
                stop = 1;
                break;
            }
            if (c->got < (size_t)size)
                continue;
            if (memcmp(c->in, c->out, (size_t)size) != 0) {
                errors++;
                snprintf(errmsg, sizeof errmsg, "echoed bytes differ from the request");
                stop = 1;
                break;
            }
            if (iv) {
                long slot = (long)((t - t_start) / interval);
                if (slot >= 0 && slot < MAX_IV) {
                    iv[slot]++;
                    if (slot + 1 > niv)
                        niv = (int)slot + 1;
                }
            }
            if (measuring) {
                counted++;
                if (nlat < MAX_LAT_SAMPLES)
                    lat[nlat++] = (float)((t - c->t0) * 1e6);
                if (max_requests > 0 && counted >= max_requests) {
                    stop = 1;
                    break;
                }
            } else {
                warm_done++;
            }
            START_REQUEST(c, idx, t);
        }
    }
    window_mark(&end, now(), server_pid);
    usage_t u = window_usage(measuring ? &begin : &end, &end);
    double elapsed = u.seconds;

    printf("{\"conns\": %d, \"size\": %ld, \"idle\": %d, \"idle_open_seconds\": %.3f, "
           "\"warmup\": %.3f, \"warmup_requests\": %lld, \"seconds\": %.6f, "
           "\"requests\": %lld, \"rps\": %.1f, ",
           conns, size, idle, idle_open_s, warmup, warm_done, elapsed, counted,
           elapsed > 0 ? counted / elapsed : 0.0);
    print_latency("latency_us", lat, nlat);
    printf(", \"loadgen_cpu\": %.3f, \"server_cpu\": %.3f, \"other_cpu\": %.3f, "
           "\"errors\": %d, \"error\": \"%s\"",
           u.loadgen_cpu, u.server_cpu, u.other_cpu, errors, errmsg);
    if (iv) {
        printf(", \"interval\": %g, \"interval_rps\": [", interval);
        for (int i = 0; i < niv; i++)
            printf("%s%.0f", i ? ", " : "", iv[i] / interval);
        printf("]");
    }
    printf("}\n");
    fflush(stdout);
    /* Exit closes every socket. */
    return errors ? 1 : 0;
}

/* LD_PRELOAD shim: make getnameinfo() numeric, so torch's reverse lookup of every new
 * connection cannot stall on this sandbox's resolver (5 s under bursts, BENCHMARK_ANCHORS.md).
 * benchmarks/tcp_store.py builds it and preloads it for every process it runs, torch's and
 * ours alike (ours never does reverse lookups, so it changes nothing for us). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <sys/socket.h>

typedef int (*getnameinfo_fn)(const struct sockaddr *, socklen_t, char *, socklen_t, char *,
                              socklen_t, int);

int getnameinfo(const struct sockaddr *addr, socklen_t addrlen, char *host, socklen_t hostlen,
                char *serv, socklen_t servlen, int flags) {
    static getnameinfo_fn real;
    if (!real) real = (getnameinfo_fn)dlsym(RTLD_NEXT, "getnameinfo");
    return real(addr, addrlen, host, hostlen, serv, servlen,
                flags | NI_NUMERICHOST | NI_NUMERICSERV);
}

/* The TCPStore hot paths in C: optional; the Python modules are the reference implementation.
 *
 * serve(): the server side.  Given a connection's buffered request bytes and the server state's
 * dicts, it answers the leading requests that need nothing but the data dict -- SET, GET, ADD,
 * CHECK, WAIT (all keys present), GETNUMKEYS, DELETE_KEY, MULTI_GET, MULTI_SET and, on extended
 * connections, WAIT_GET / WAIT_MULTI_GET with every key present -- and returns how many bytes
 * it consumed.  It stops, without consuming, at the first request it cannot finish exactly as
 * _state.ServerState would: an incomplete request, an unknown or extension command, a length
 * over the limits, a write to a key somebody waits on, a counter that is not plain decimal text,
 * a missing key that a wait or check would have to look up in the queues, a reply carrying a
 * large value (Python queues it by reference).  The Python decoder
 * and state machine then take that request (and raise the protocol error, park the waiter, ...).
 * Replies of one call are written with a single write() call, in request order.
 *
 * call(): the client side.  Send a request on a blocking socket without ever blocking in send()
 * (a server that stops reading leaves the rest to Python, which waits until the deadline), and
 * read its reply, spinning with MSG_DONTWAIT for up to `spin` seconds before sleeping (in one
 * recv bounded by the socket's SO_RCVTIMEO when the deadline allows, else poll() then recv()),
 * all without the GIL.  The deadline is an instant of CLOCK_MONOTONIC, the clock of Python's
 * time.monotonic(): the caller computes it once for a whole operation.
 *
 * Byte layout: ../../../shared/TCP_PROTOCOL.md (little-endian integers; strings are u64 length
 * plus bytes).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

enum {
    Q_SET = 1,
    Q_GET = 3,
    Q_ADD = 4,
    Q_CHECK = 5,
    Q_WAIT = 6,
    Q_GETNUMKEYS = 7,
    Q_DELETE_KEY = 8,
    Q_MULTI_GET = 10,
    Q_MULTI_SET = 11,
    Q_WAIT_GET = 0x40,
    Q_WAIT_MULTI_GET = 0x41,
};

/* Stop batching once this many reply bytes are pending, so the transport's flow control
 * (pause_writing) is consulted between batches and a peer that does not read stays bounded. */
#define BATCH_REPLY_BYTES (256 * 1024)

/* Replies carrying a value larger than this, or growing past BATCH_REPLY_BYTES, are left to
 * Python, which queues stored values by reference instead of copying them (twice: into the
 * reply buffer, then into a bytes object) -- and checks them against max_reply. */
#define INLINE_VALUE_BYTES (64 * 1024)

static uint64_t
get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

static void
put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (unsigned char)(v >> (8 * i));
    }
}

/* ------------------------------------------------------------------ reply buffer */

typedef struct {
    unsigned char *p;
    size_t len, cap;
} Out;

static unsigned char *
out_grow(Out *o, size_t more)
{
    if (o->len + more > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap < o->len + more) {
            cap *= 2;
        }
        unsigned char *p = PyMem_Realloc(o->p, cap);
        if (p == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        o->p = p;
        o->cap = cap;
    }
    unsigned char *at = o->p + o->len;
    o->len += more;
    return at;
}

static int
out_status(Out *o, int extended)
{
    if (!extended) {
        return 0;
    }
    unsigned char *at = out_grow(o, 1);
    if (at == NULL) {
        return -1;
    }
    *at = 0; /* STATUS_OK */
    return 0;
}

static int
out_u8(Out *o, unsigned char v)
{
    unsigned char *at = out_grow(o, 1);
    if (at == NULL) {
        return -1;
    }
    *at = v;
    return 0;
}

static int
out_u64(Out *o, uint64_t v)
{
    unsigned char *at = out_grow(o, 8);
    if (at == NULL) {
        return -1;
    }
    put_u64(at, v);
    return 0;
}

static int
out_string(Out *o, PyObject *value)
{
    Py_ssize_t n = PyBytes_GET_SIZE(value);
    unsigned char *at = out_grow(o, 8 + (size_t)n);
    if (at == NULL) {
        return -1;
    }
    put_u64(at, (uint64_t)n);
    memcpy(at + 8, PyBytes_AS_STRING(value), (size_t)n);
    return 0;
}

/* ------------------------------------------------------------------ request parsing */

typedef struct {
    const unsigned char *b;
    Py_ssize_t n;
    Py_ssize_t pos;
    uint64_t max_key, max_value, max_keys;
} In;

/* A wire string at in->pos, at most `limit` bytes: 1 and advance, 0 if incomplete or too long. */
static int
take_str(In *in, uint64_t limit, const unsigned char **s, Py_ssize_t *len)
{
    if (in->n - in->pos < 8) {
        return 0;
    }
    uint64_t size = get_u64(in->b + in->pos);
    if (size > limit || size > (uint64_t)(in->n - in->pos - 8)) {
        return 0;
    }
    *s = in->b + in->pos + 8;
    *len = (Py_ssize_t)size;
    in->pos += 8 + (Py_ssize_t)size;
    return 1;
}

static int
take_u64(In *in, uint64_t *v)
{
    if (in->n - in->pos < 8) {
        return 0;
    }
    *v = get_u64(in->b + in->pos);
    in->pos += 8;
    return 1;
}

/* A key count in [0, max_keys]. */
static int
take_count(In *in, Py_ssize_t *count)
{
    uint64_t v;
    if (!take_u64(in, &v) || v > in->max_keys) {
        return 0;
    }
    *count = (Py_ssize_t)v;
    return 1;
}

/* The stored counter, when it is text that both torch and parse_counter read the same way we
 * can here: empty, or an optional '-' and 1 to 18 digits with nothing else.  0 otherwise (the
 * Python path then applies std::stoll's rules or raises the error). */
static int
plain_counter(PyObject *raw, int64_t *out)
{
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    const char *s = PyBytes_AS_STRING(raw);
    if (n == 0) {
        *out = 0;
        return 1;
    }
    int negative = s[0] == '-';
    Py_ssize_t i = negative;
    if (n - i < 1 || n - i > 18) {
        return 0;
    }
    int64_t v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
        v = v * 10 + (s[i] - '0');
    }
    *out = negative ? -v : v;
    return 1;
}

/* 1 when a write to `key` must go through Python (somebody waits on it), -1 on error. */
static int
watched(PyObject *waiters, PyObject *key)
{
    if (PyDict_GET_SIZE(waiters) == 0) {
        return 0;
    }
    return PyDict_Contains(waiters, key);
}

/* The key at in->pos as bytes: 1 (*key is a new reference), 0 incomplete or too long,
 * -1 error. */
static int
take_key(In *in, PyObject **key)
{
    const unsigned char *k;
    Py_ssize_t klen;
    if (!take_str(in, in->max_key, &k, &klen)) {
        return 0;
    }
    *key = PyBytes_FromStringAndSize((const char *)k, klen);
    return *key == NULL ? -1 : 1;
}

/* take_key() for a write: 0 also when a waiter watches the key (Python must wake it). */
static int
take_unwatched_key(In *in, PyObject *waiters, PyObject **key)
{
    int rc = take_key(in, key);
    if (rc <= 0) {
        return rc;
    }
    int w = watched(waiters, *key);
    if (w != 0) {
        Py_CLEAR(*key);
        return w < 0 ? -1 : 0;
    }
    return 1;
}

/* Are all `count` keys from in->pos in `data`?  Leaves in->pos after the keys.
 * 1 yes, 0 incomplete / too long / some key missing, -1 error. */
static int
all_present(In *in, PyObject *data, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key;
        int rc = take_key(in, &key);
        if (rc <= 0) {
            return rc;
        }
        int has = PyDict_Contains(data, key);
        Py_DECREF(key);
        if (has <= 0) {
            return has;
        }
    }
    return 1;
}

/* Append the values of `count` keys from in->pos (b"" for a missing key when `missing_ok`,
 * else stop).  1 done, 0 stop (the caller rolls the reply buffer back), -1 error. */
static int
put_values(In *in, PyObject *data, Py_ssize_t count, Out *o, int missing_ok)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key;
        int rc = take_key(in, &key);
        if (rc <= 0) {
            return rc;
        }
        PyObject *value = PyDict_GetItemWithError(data, key); /* borrowed */
        Py_DECREF(key);
        if (value == NULL && PyErr_Occurred()) {
            return -1;
        }
        if (value == NULL) {
            if (!missing_ok) {
                return 0;
            }
            if (out_u64(o, 0) < 0) {
                return -1;
            }
        }
        else if (PyBytes_GET_SIZE(value) > INLINE_VALUE_BYTES || o->len > BATCH_REPLY_BYTES) {
            return 0; /* a large reply: Python sends it by reference */
        }
        else if (out_string(o, value) < 0) {
            return -1;
        }
    }
    return 1;
}

/* Handle one request at in->pos.  1 handled (in->pos moved past it), 0 leave it to Python,
 * -1 error.  Nothing is changed in the state unless 1 is returned. */
static int
serve_one(In *in, PyObject *data, PyObject *waiters, int extended, Out *o)
{
    const unsigned char *k, *v;
    Py_ssize_t klen, vlen, count;
    PyObject *key;
    int rc;
    int cmd = in->b[in->pos];
    in->pos += 1;

    switch (cmd) {
    case Q_SET: {
        if ((rc = take_unwatched_key(in, waiters, &key)) <= 0) {
            return rc;
        }
        if (!take_str(in, in->max_value, &v, &vlen)) {
            Py_DECREF(key);
            return 0;
        }
        PyObject *value = PyBytes_FromStringAndSize((const char *)v, vlen);
        rc = value == NULL ? -1 : PyDict_SetItem(data, key, value);
        Py_DECREF(key);
        Py_XDECREF(value);
        return rc < 0 ? -1 : 1;
    }
    case Q_GET:
    case Q_WAIT_GET: {
        if (cmd == Q_WAIT_GET && !extended) {
            return 0; /* Python raises the protocol error */
        }
        if ((rc = take_key(in, &key)) <= 0) {
            return rc;
        }
        PyObject *value = PyDict_GetItemWithError(data, key); /* borrowed */
        Py_DECREF(key);
        if (value == NULL) {
            if (PyErr_Occurred()) {
                return -1;
            }
            if (cmd == Q_WAIT_GET) {
                return 0; /* not there yet: Python parks the waiter */
            }
            return (out_status(o, extended) < 0 || out_u64(o, 0) < 0) ? -1 : 1;
        }
        if (PyBytes_GET_SIZE(value) > INLINE_VALUE_BYTES) {
            return 0; /* a large value: Python sends it by reference */
        }
        return (out_status(o, extended) < 0 || out_string(o, value) < 0) ? -1 : 1;
    }
    case Q_ADD: {
        uint64_t amount;
        if ((rc = take_unwatched_key(in, waiters, &key)) <= 0) {
            return rc;
        }
        if (!take_u64(in, &amount)) {
            Py_DECREF(key);
            return 0;
        }
        PyObject *old = PyDict_GetItemWithError(data, key); /* borrowed */
        int64_t base = 0;
        if (old == NULL && PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
        if (old != NULL && !plain_counter(old, &base)) {
            Py_DECREF(key);
            return 0;
        }
        /* int64 wrap-around, as torch and wrap_int64 do */
        int64_t total = old == NULL ? (int64_t)amount : (int64_t)((uint64_t)base + amount);
        char text[24];
        int tlen = snprintf(text, sizeof text, "%lld", (long long)total);
        PyObject *value = PyBytes_FromStringAndSize(text, tlen);
        rc = value == NULL ? -1 : PyDict_SetItem(data, key, value);
        Py_DECREF(key);
        Py_XDECREF(value);
        if (rc < 0 || out_status(o, extended) < 0 || out_u64(o, (uint64_t)total) < 0) {
            return -1;
        }
        return 1;
    }
    case Q_CHECK:
    case Q_WAIT: {
        if (!take_count(in, &count)) {
            return 0;
        }
        int all = all_present(in, data, count);
        if (all <= 0) {
            /* missing keys may still exist as queues, or must be waited for: Python decides */
            return all;
        }
        /* CHECK_READY and STOP_WAITING are both 0 */
        return (out_status(o, extended) < 0 || out_u8(o, 0) < 0) ? -1 : 1;
    }
    case Q_GETNUMKEYS:
        return (out_status(o, extended) < 0 || out_u64(o, (uint64_t)PyDict_GET_SIZE(data)) < 0)
                   ? -1
                   : 1;
    case Q_DELETE_KEY: {
        if ((rc = take_key(in, &key)) <= 0) {
            return rc;
        }
        int has = PyDict_Contains(data, key);
        if (has == 1 && PyDict_DelItem(data, key) < 0) {
            has = -1;
        }
        Py_DECREF(key);
        if (has < 0) {
            return -1;
        }
        return (out_status(o, extended) < 0 || out_u64(o, (uint64_t)has) < 0) ? -1 : 1;
    }
    case Q_MULTI_GET:
    case Q_WAIT_MULTI_GET: {
        if (cmd == Q_WAIT_MULTI_GET && !extended) {
            return 0;
        }
        if (!take_count(in, &count)) {
            return 0;
        }
        size_t mark = o->len;
        if (out_status(o, extended) < 0) {
            return -1;
        }
        rc = put_values(in, data, count, o, cmd == Q_MULTI_GET);
        if (rc == 0) {
            o->len = mark;
        }
        return rc;
    }
    case Q_MULTI_SET: {
        if (!take_count(in, &count)) {
            return 0;
        }
        /* Applied entirely here or entirely in Python: first check that the request is
         * complete and within the limits, and that no waiter watches any of its keys. */
        Py_ssize_t first = in->pos;
        for (Py_ssize_t i = 0; i < count; i++) {
            if (!take_str(in, in->max_key, &k, &klen) ||
                !take_str(in, in->max_value, &v, &vlen)) {
                return 0;
            }
        }
        Py_ssize_t end = in->pos;
        if (PyDict_GET_SIZE(waiters) != 0) {
            in->pos = first;
            for (Py_ssize_t i = 0; i < count; i++) {
                if ((rc = take_unwatched_key(in, waiters, &key)) <= 0) {
                    return rc;
                }
                Py_DECREF(key);
                take_str(in, in->max_value, &v, &vlen);
            }
        }
        in->pos = first;
        for (Py_ssize_t i = 0; i < count; i++) {
            if ((rc = take_key(in, &key)) < 0) {
                return -1;
            }
            take_str(in, in->max_value, &v, &vlen);
            PyObject *value = PyBytes_FromStringAndSize((const char *)v, vlen);
            rc = value == NULL ? -1 : PyDict_SetItem(data, key, value);
            Py_DECREF(key);
            Py_XDECREF(value);
            if (rc < 0) {
                return -1;
            }
        }
        in->pos = end;
        return 1;
    }
    default:
        return 0;
    }
}

PyDoc_STRVAR(serve_doc,
"serve(data, waiters, extended, max_key, max_value, max_keys, write, buf) -> int\n\n"
"Answer the leading requests in buf that need only the data dict; write their replies with\n"
"one write() call; return the number of bytes consumed (0: leave everything to Python).");

static PyObject *
serve(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "serve() takes 8 arguments (%zd given)", nargs);
        return NULL;
    }
    /* buf comes last so that a connection can bind the rest once (functools.partial) */
    PyObject *data = args[0], *waiters = args[1], *write = args[6];
    if (!PyDict_CheckExact(data) || !PyDict_CheckExact(waiters)) {
        PyErr_SetString(PyExc_TypeError, "serve(): data and waiters must be dicts");
        return NULL;
    }
    int extended = PyObject_IsTrue(args[2]);
    if (extended < 0) {
        return NULL;
    }
    In in = {0};
    in.max_key = PyLong_AsUnsignedLongLong(args[3]);
    in.max_value = PyLong_AsUnsignedLongLong(args[4]);
    in.max_keys = PyLong_AsUnsignedLongLong(args[5]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[7], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    in.b = view.buf;
    in.n = view.len;
    Out o = {0};
    Py_ssize_t done = 0;
    int rc = 1;
    while (done < in.n && o.len < BATCH_REPLY_BYTES) {
        in.pos = done;
        rc = serve_one(&in, data, waiters, extended, &o);
        if (rc <= 0) {
            break;
        }
        done = in.pos;
    }
    PyBuffer_Release(&view);
    PyObject *result = NULL;
    if (o.len > 0) {
        /* Replies of the requests already applied go out even if a later one failed. */
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        PyObject *reply = PyBytes_FromStringAndSize((const char *)o.p, (Py_ssize_t)o.len);
        PyObject *ret = reply == NULL ? NULL : PyObject_CallOneArg(write, reply);
        Py_XDECREF(reply);
        if (ret == NULL) {
            Py_XDECREF(type);
            Py_XDECREF(exc);
            Py_XDECREF(tb);
            PyMem_Free(o.p);
            return NULL;
        }
        Py_DECREF(ret);
        PyErr_Restore(type, exc, tb);
    }
    PyMem_Free(o.p);
    if (rc >= 0) {
        result = PyLong_FromSsize_t(done);
    }
    return result;
}

/* ------------------------------------------------------------------ client */

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Reply shapes of call(). */
enum { R_NONE = 0, R_U8 = 1, R_I64 = 2, R_BYTES = 3 };

enum { R_DONE = 0, R_FAILED = -1, R_PAUSED = -2 };

/* call()'s status when the server took only part of the request (its buffers are full). */
enum { S_UNSENT = -2 };

typedef struct {
    int fd;
    double spin;     /* seconds to poll with MSG_DONTWAIT before sleeping in poll() */
    double deadline; /* monotonic; < 0: none */
    double rcvtimeo; /* the socket's SO_RCVTIMEO in seconds; 0: none (blocks forever) */
    int err;         /* errno of a failed recv, or -1 for EOF */
    unsigned char *buf;
    unsigned char *stack; /* the caller's first buffer, not to be realloc'ed */
    size_t len, cap;
} Reader;

/* Receive until r->len >= want, without the GIL.  Reads may run past `want` (the caller hands
 * the surplus back).  R_DONE; R_FAILED (r->err); R_PAUSED when the deadline passed or a signal
 * arrived -- the Python path then carries on from the bytes read so far. */
static int
fill(Reader *r, size_t want)
{
    while (r->len < want) {
        if (r->cap < want) {
            size_t cap = r->cap;
            while (cap < want) {
                cap *= 2;
            }
            unsigned char *p = r->buf == r->stack ? malloc(cap) : realloc(r->buf, cap);
            if (p == NULL) {
                r->err = ENOMEM;
                return R_FAILED;
            }
            if (r->buf == r->stack) {
                memcpy(p, r->stack, r->len);
            }
            r->buf = p;
            r->cap = cap;
        }
        ssize_t got = -1;
        int again = 1; /* nothing to read yet */
        if (r->spin > 0) {
            double give_up = now() + r->spin;
            do {
                got = recv(r->fd, r->buf + r->len, r->cap - r->len, MSG_DONTWAIT);
                again = got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
            } while (again && now() < give_up);
            if (again) {
                r->spin = 0; /* one spin per call: past it, the server is busy */
            }
        }
        if (again && (r->deadline < 0 ? r->rcvtimeo == 0
                                      : r->rcvtimeo > 0 && r->deadline - now() + 0.01 >= r->rcvtimeo)) {
            /* A plain blocking recv returns by the deadline (SO_RCVTIMEO is shorter): one
             * system call where poll()+recv() take two -- they cost microseconds on gVisor. */
            got = recv(r->fd, r->buf + r->len, r->cap - r->len, 0);
            again = got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
            if (again && r->deadline >= 0 && r->deadline - now() <= 0) {
                return R_PAUSED;
            }
            if (again) {
                continue;
            }
        }
        else if (again) {
            struct pollfd p = {.fd = r->fd, .events = POLLIN};
            int ms = -1;
            if (r->deadline >= 0) {
                double left = r->deadline - now();
                if (left <= 0) {
                    return R_PAUSED;
                }
                ms = (int)(left * 1000) + 1;
            }
            int ready = poll(&p, 1, ms);
            if (ready < 0 && errno == EINTR) {
                return R_PAUSED; /* Python runs its signal handlers, then resumes */
            }
            if (ready < 0) {
                r->err = errno;
                return R_FAILED;
            }
            if (ready == 0) {
                continue; /* re-check the deadline */
            }
            got = recv(r->fd, r->buf + r->len, r->cap - r->len, MSG_DONTWAIT);
            if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                continue;
            }
        }
        if (got < 0) {
            if (errno == EINTR) {
                return R_PAUSED;
            }
            r->err = errno;
            return R_FAILED;
        }
        if (got == 0) {
            r->err = -1;
            return R_FAILED;
        }
        r->len += (size_t)got;
    }
    return R_DONE;
}

/* Read one reply (status byte first when extended) into r; sets *status, *head (where the
 * payload starts), *size (string length) and returns its total length, or a negative R_. */
static Py_ssize_t
read_reply(Reader *r, int shape, int extended, int *status, size_t *head, uint64_t *size)
{
    int rc;
    *status = 0;
    *head = 0;
    *size = 0;
    if (extended) {
        if ((rc = fill(r, 1)) != R_DONE) {
            return rc;
        }
        *status = r->buf[0];
        *head = 1;
    }
    if (*status == 1) { /* STATUS_ERROR: a message string follows */
        shape = R_BYTES;
    }
    else if (*status != 0) {
        return 1; /* canceled or unexpected: the caller decides */
    }
    size_t width = shape == R_U8 ? 1 : 8;
    if ((rc = fill(r, *head + width)) != R_DONE) {
        return rc;
    }
    if (shape != R_BYTES) {
        return (Py_ssize_t)(*head + width);
    }
    *size = get_u64(r->buf + *head);
    if (*size > ((uint64_t)1 << 40)) {
        r->err = EPROTO;
        return R_FAILED;
    }
    if ((rc = fill(r, *head + 8 + (size_t)*size)) != R_DONE) {
        return rc;
    }
    return (Py_ssize_t)(*head + 8 + *size);
}

PyDoc_STRVAR(call_doc,
"call(fd, payload, shape, extended, spin, deadline, rcvtimeo) -> (status, value, rest, took)\n\n"
"Send payload (small: sent whole unless the socket's buffer is full, retrying on EINTR) and\n"
"read one reply of the given shape (0 none, 1 u8, 2 i64, 3 string), status byte first on\n"
"extended connections.  status 0: ok, value parsed; 1: error reply, value is its message;\n"
"other >= 0: that status byte alone; -1: the reply is not complete (deadline passed or a\n"
"signal arrived): value is None and the caller goes on reading after rest; -2: the server\n"
"took only the first `value` bytes of the request (it is not reading): the caller sends the\n"
"rest, then reads the reply.  rest: bytes read past the reply (or the partial reply).\n"
"deadline: an instant of time.monotonic() (CLOCK_MONOTONIC); < 0: none.  rcvtimeo: the\n"
"socket's SO_RCVTIMEO in seconds (0: none).  took: seconds from send to reply.  Raises OSError\n"
"on a failed send or recv, EOFError when the peer closed the connection.");

static PyObject *
call(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "call() takes 7 arguments (%zd given)", nargs);
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    long shape = PyLong_AsLong(args[2]);
    int extended = PyObject_IsTrue(args[3]);
    double spin = PyFloat_AsDouble(args[4]);
    double deadline = PyFloat_AsDouble(args[5]);
    double rcvtimeo = PyFloat_AsDouble(args[6]);
    if (PyErr_Occurred() || extended < 0) {
        return NULL;
    }
    if (shape < R_NONE || shape > R_BYTES) {
        PyErr_Format(PyExc_ValueError, "call(): unknown reply shape %ld", shape);
        return NULL;
    }
    Py_buffer payload;
    if (PyObject_GetBuffer(args[1], &payload, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    unsigned char first[512];
    Reader r = {
        .fd = (int)fd, .spin = spin, .buf = first, .stack = first, .cap = sizeof first,
        .deadline = deadline < 0 ? -1.0 : deadline, .rcvtimeo = rcvtimeo};
    int status = 0, send_err = 0;
    size_t head = 0;
    uint64_t size = 0;
    Py_ssize_t used = 0, unsent = 0;
    double start = 0, took = 0;
    Py_BEGIN_ALLOW_THREADS
    start = now();
    const char *p = payload.buf;
    Py_ssize_t n = payload.len;
    while (n > 0) {
        /* MSG_DONTWAIT: a server that stopped reading must not hold us past the deadline; the
         * caller waits for it (poll, bounded) with the GIL free to run signal handlers. */
        ssize_t sent = send(r.fd, p, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0 && errno == EINTR) {
            continue;
        }
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        if (sent < 0) {
            send_err = errno;
            break;
        }
        p += sent;
        n -= sent;
    }
    unsent = send_err ? 0 : n;
    if (!send_err && !unsent && shape != R_NONE) {
        used = read_reply(&r, (int)shape, extended, &status, &head, &size);
    }
    took = now() - start;
    Py_END_ALLOW_THREADS
    Py_ssize_t payload_len = payload.len;
    PyBuffer_Release(&payload);
    PyObject *result = NULL;
    if (send_err) {
        errno = send_err;
        PyErr_SetFromErrno(PyExc_OSError);
    }
    else if (used == R_FAILED) {
        if (r.err == -1) {
            PyErr_SetString(PyExc_EOFError, "connection closed by the peer");
        }
        else {
            errno = r.err;
            PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    else if (unsent) {
        result = Py_BuildValue("(inyd)", S_UNSENT, payload_len - unsent, "", took);
    }
    else {
        PyObject *value;
        if (used == R_PAUSED) {
            status = -1;
            used = 0;
            value = Py_NewRef(Py_None);
        }
        else if (shape == R_NONE || (status != 0 && status != 1)) {
            value = Py_NewRef(Py_None);
        }
        else if (status == 1 || shape == R_BYTES) {
            value = PyBytes_FromStringAndSize((const char *)r.buf + head + 8, (Py_ssize_t)size);
        }
        else if (shape == R_U8) {
            value = PyLong_FromLong(r.buf[head]);
        }
        else {
            value = PyLong_FromLongLong((long long)(int64_t)get_u64(r.buf + head));
        }
        PyObject *rest = PyBytes_FromStringAndSize((const char *)r.buf + used,
                                                   (Py_ssize_t)r.len - used);
        if (value != NULL && rest != NULL) {
            result = Py_BuildValue("(iNNd)", status, value, rest, took);
        }
        else {
            Py_XDECREF(value);
            Py_XDECREF(rest);
        }
    }
    if (r.buf != first) {
        free(r.buf);
    }
    return result;
}

PyDoc_STRVAR(encode_multi_set_doc,
"encode_multi_set(prefix, keys, values) -> bytes | None\n\n"
"The MULTI_SET request for str keys (each UTF-8 encoded after the bytes prefix) and bytes\n"
"values, lists of equal length; None when a key does not encode as plain UTF-8 (lone\n"
"surrogates): the caller then encodes in Python.");

static PyObject *
encode_multi_set(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyList_CheckExact(args[1]) ||
        !PyList_CheckExact(args[2]) || PyList_GET_SIZE(args[1]) != PyList_GET_SIZE(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_multi_set(prefix: bytes, keys: list[str], values: list[bytes]) "
                        "with as many values as keys");
        return NULL;
    }
    PyObject *prefix = args[0], *keys = args[1], *values = args[2];
    Py_ssize_t count = PyList_GET_SIZE(keys), plen = PyBytes_GET_SIZE(prefix);
    size_t total = 1 + 8;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i), *value = PyList_GET_ITEM(values, i);
        if (!PyUnicode_CheckExact(key) || !PyBytes_CheckExact(value)) {
            PyErr_SetString(PyExc_TypeError, "encode_multi_set(): keys must be str, values bytes");
            return NULL;
        }
        Py_ssize_t klen;
        if (PyUnicode_AsUTF8AndSize(key, &klen) == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                PyErr_Clear();
                Py_RETURN_NONE;
            }
            return NULL;
        }
        total += 16 + (size_t)plen + (size_t)klen + (size_t)PyBytes_GET_SIZE(value);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL) {
        return NULL;
    }
    unsigned char *at = (unsigned char *)PyBytes_AS_STRING(out);
    *at++ = Q_MULTI_SET;
    put_u64(at, (uint64_t)count);
    at += 8;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t klen;
        const char *k = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(keys, i), &klen); /* cached */
        PyObject *value = PyList_GET_ITEM(values, i);
        Py_ssize_t vlen = PyBytes_GET_SIZE(value);
        put_u64(at, (uint64_t)(plen + klen));
        memcpy(at + 8, PyBytes_AS_STRING(prefix), (size_t)plen);
        memcpy(at + 8 + plen, k, (size_t)klen);
        at += 8 + plen + klen;
        put_u64(at, (uint64_t)vlen);
        memcpy(at + 8, PyBytes_AS_STRING(value), (size_t)vlen);
        at += 8 + vlen;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"encode_multi_set", (PyCFunction)(void (*)(void))encode_multi_set, METH_FASTCALL,
     encode_multi_set_doc},
    {"serve", (PyCFunction)(void (*)(void))serve, METH_FASTCALL, serve_doc},
    {"call", (PyCFunction)(void (*)(void))call, METH_FASTCALL, call_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "stores.tcp._speedups",
    .m_doc = "C hot paths for the TCPStore server and client (optional; Python is the reference).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module);
}

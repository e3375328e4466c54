/* The hot paths of ingest, aggregation and serialization, in C. Optional: without it, Python does the same.
 *
 *   ingest(data, offset, shapes, bucket, learner, cached=True) -> (accepted, blocked, stop)
 *
 * Applies the lines of `data` from `offset` whose shape is already in `shapes` (b"name:suffix" -> (slot, kind,
 * rate, copy slot)) and whose value is a plain decimal number (or, for sets, any non-empty member). It stops at
 * the first other line and returns that line's offset as `stop` (len(data) when every line was taken), so the
 * caller handles that one line in Python and calls again: lines are applied in datagram order either way.
 * Numbers are read as float() reads them (a short decimal exactly, by exact_decimal; the rest by
 * PyOS_string_to_double, the routine behind float()), so results are identical. With `cached`, the shapes dict
 * is mirrored in the SHAPE CACHE (one dict at a time: a Unix socket sender's own dict passes cached=False).
 * With a `learner` (see learn()), the plain first sight of a context is learned here too.
 *
 *   sketch_insert(samples, bins, (count, sum, min, max), (min_value, log_gamma, bias, max_key, inf_key))
 *       -> (count, sum, min, max)
 *
 * Inserts distribution samples (floats, or (value, rate) tuples counted uint(1/rate) times) into a sketch's
 * bins, as relay/pipeline/sketch.py's Sketch.insert does one at a time: the same libm log, the same round-half-even
 * (nearbyint), the same order of additions, so the result is identical.
 *
 *   histogram_pack(samples, values, rates) -> rates
 *   histogram_summary(values, rates, percentiles) -> (count, sum, min, max, median, ranks) | None
 *
 * Histogram samples packed into doubles twice a second, and their aggregates at flush, exactly as
 * relay/pipeline/buckets.py computes them from the samples (see each function).
 *
 *   series_item(name, host, tags, points, type, interval) -> bytes | None
 *
 * One MetricPayload.series entry (field 1) holding a MetricSeries, byte for byte what relay/pipeline/serialize.py's
 * ProtobufEncoder writes: resources=1 (host), metric=2, tags=3, points=4 (value=1 double, timestamp=2),
 * type=5, interval=8. None when a tag is `device:...` (Python moves it to a resource).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The kinds of relay/pipeline/model.py's Kind, by number; the module exports them and a test holds them equal. */
enum { GAUGE, COUNTER, SET, HISTOGRAM, DISTRIBUTION, BLOCKED };
#define MAX_NUMBER 63

/* A decimal of at most EXACT_DIGITS digits and no exponent, as strtod reads it, without strtod: its digits as an
 * integer are exact in a double (< 2^53), and so is 10^k for k <= 22, so one IEEE division rounds the quotient
 * correctly, to the double strtod returns (Clinger's fast path). Python's strtod costs ~3 times the rest of a
 * line's work (profiled under the packed-counter load, issue 26): it sets the x87 control word on every call. */
#define EXACT_DIGITS 15
static const double POWERS_OF_TEN[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14,
                                       1e15};

static double exact_decimal(const char *text, Py_ssize_t length) {
    uint64_t digits = 0;
    int fraction = -1;  /* digits after the point; -1 before it */
    for (Py_ssize_t i = (text[0] == '+' || text[0] == '-'); i < length; i++) {
        if (text[i] == '.') {
            fraction = 0;
            continue;
        }
        digits = digits * 10 + (uint64_t)(text[i] - '0');
        if (fraction >= 0) fraction++;
    }
    double value = (double)digits;
    if (fraction > 0) value /= POWERS_OF_TEN[fraction];
    return text[0] == '-' ? -value : value;
}

/* The decimal subset of Go's ParseFloat that float() reads the same way: [+-] digits [. digits] [e [+-] digits]
 * with at least one mantissa digit. Anything else (hex, underscores, inf, nan, spaces) is left to Python. */
static int parse_number(const char *text, Py_ssize_t length, double *out) {
    if (length == 0 || length > MAX_NUMBER) return 0;
    Py_ssize_t i = 0, digits = 0;
    if (text[i] == '+' || text[i] == '-') i++;
    while (i < length && text[i] >= '0' && text[i] <= '9') { i++; digits++; }
    if (i < length && text[i] == '.') {
        i++;
        while (i < length && text[i] >= '0' && text[i] <= '9') { i++; digits++; }
    }
    if (digits == 0) return 0;
    if (i < length && (text[i] == 'e' || text[i] == 'E')) {
        i++;
        if (i < length && (text[i] == '+' || text[i] == '-')) i++;
        Py_ssize_t exponent_digits = 0;
        while (i < length && text[i] >= '0' && text[i] <= '9') { i++; exponent_digits++; }
        if (exponent_digits == 0) return 0;
    }
    if (i != length) return 0;
    if (digits <= EXACT_DIGITS && !memchr(text, 'e', length) && !memchr(text, 'E', length)) {
        *out = exact_decimal(text, length);
        return 1;
    }
    char buffer[MAX_NUMBER + 1];
    memcpy(buffer, text, length);
    buffer[length] = '\0';
    char *end = NULL;
    double value = PyOS_string_to_double(buffer, &end, NULL);
    if (value == -1.0 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
    if (end != buffer + length || !isfinite(value)) return 0;  /* overflow is an error in Go: Python decides */
    *out = value;
    return 1;
}

/* dict[slot] as a list, made when missing; a borrowed reference. */
static PyObject *list_for(PyObject *dict, PyObject *slot) {
    PyObject *list = PyDict_GetItemWithError(dict, slot);
    if (list != NULL || PyErr_Occurred()) return list;
    list = PyList_New(0);
    if (list == NULL) return NULL;
    int failed = PyDict_SetItem(dict, slot, list);
    Py_DECREF(list);
    return failed ? NULL : list;
}

static int apply_number(int kind, double number, PyObject *slot, PyObject *rate, PyObject *copy,
                        PyObject *gauges, PyObject *counters, PyObject *histograms, PyObject *distributions) {
    PyObject *value;
    int failed;
    switch (kind) {
    case GAUGE:
        value = PyFloat_FromDouble(number);
        if (value == NULL) return -1;
        failed = PyDict_SetItem(gauges, slot, value);
        Py_DECREF(value);
        return failed;
    case COUNTER: {
        PyObject *total = PyDict_GetItemWithError(counters, slot);
        if (total == NULL && PyErr_Occurred()) return -1;
        double sum = (total ? PyFloat_AS_DOUBLE(total) : 0.0) + number * PyFloat_AS_DOUBLE(rate);
        value = PyFloat_FromDouble(sum);
        if (value == NULL) return -1;
        failed = PyDict_SetItem(counters, slot, value);
        Py_DECREF(value);
        return failed;
    }
    default: {  /* histogram or distribution: a float, or (value, rate) when the rate is not 1 */
        PyObject *sample = PyFloat_FromDouble(number);
        if (sample != NULL && PyFloat_AS_DOUBLE(rate) != 1.0) {  /* (value, rate): two floats, never in a cycle */
            PyObject *pair = PyTuple_New(2);
            if (pair != NULL) {
                Py_INCREF(rate);
                PyTuple_SET_ITEM(pair, 0, sample);
                PyTuple_SET_ITEM(pair, 1, rate);
                PyObject_GC_UnTrack(pair);  /* the collector has nothing to find in it: spare it the visits */
            } else {
                Py_DECREF(sample);
            }
            sample = pair;
        }
        if (sample == NULL) return -1;
        PyObject *samples = list_for(kind == HISTOGRAM ? histograms : distributions, slot);
        failed = samples == NULL || PyList_Append(samples, sample) < 0;
        if (!failed && PyLong_AsLong(copy) >= 0) {
            PyObject *copies = list_for(distributions, copy);
            failed = copies == NULL || PyList_Append(copies, sample) < 0;
        }
        Py_DECREF(sample);
        return failed ? -1 : 0;
    }
    }
}

static int add_member(PyObject *sets, PyObject *slot, const char *text, Py_ssize_t length) {
    PyObject *members = PyDict_GetItemWithError(sets, slot);
    if (members == NULL) {
        if (PyErr_Occurred()) return -1;
        members = PySet_New(NULL);
        if (members == NULL || PyDict_SetItem(sets, slot, members) < 0) { Py_XDECREF(members); return -1; }
        Py_DECREF(members);
    }
    PyObject *member = PyUnicode_DecodeUTF8(text, length, "replace");
    if (member == NULL) return -1;
    int failed = PySet_Add(members, member);
    Py_DECREF(member);
    return failed;
}

/* The first sight of a context, in C (Ingest._first_sight does the same in Python, and decides the rest).
 *
 * `learner` is (Context, hostname, extra_tags, blocklist, strings, strings_limit, slot, copy_slot, shape_limit,
 * tag_rule_names, origins): the enricher's plain case (no namespace, mapper or prefix blocklist; relay/pipeline/ingest.py
 * builds it); the metrics of metric_tag_filterlist are left to Python, which caches their shapes cut. A line is
 * learned here only when the reference parser and the enricher would plainly agree: `name:number|type`, then
 * any of `@rate` (a decimal) and `#tags` (valid UTF-8, none empty, none starting with `host:` or `dd.internal.`)
 * and fields the parser ignores (with `origins`, not c:, e: or card:); no `T` timestamp, no packed values. Returns the new shape (a borrowed
 * reference, stored in `shapes` under `key`), or NULL without an error for a line that Python must learn. */
static const char *const TYPE_NAMES[] = {"g", "c", "s", "h", "ms", "d"};
static const int TYPE_KINDS[] = {GAUGE, COUNTER, SET, HISTOGRAM, HISTOGRAM, DISTRIBUTION};

static PyObject *shared(PyObject *strings, Py_ssize_t limit, PyObject *text) {
    /* One copy of each name and tag (Enricher._shared): returns a new reference. */
    PyObject *known = PyDict_GetItemWithError(strings, text);
    if (known != NULL) { Py_INCREF(known); return known; }
    if (PyErr_Occurred()) return NULL;
    if (PyDict_GET_SIZE(strings) >= limit) PyDict_Clear(strings);
    if (PyDict_SetItem(strings, text, text) < 0) return NULL;
    Py_INCREF(text);
    return text;
}

static int compare_strings(const void *a, const void *b) {
    /* UTF-8 byte order is code point order: the order of Python's sorted() on str. */
    PyObject *left = *(PyObject *const *)a, *right = *(PyObject *const *)b;
    Py_ssize_t left_length, right_length;
    const char *left_text = PyUnicode_AsUTF8AndSize(left, &left_length);
    const char *right_text = PyUnicode_AsUTF8AndSize(right, &right_length);
    int order = memcmp(left_text, right_text, left_length < right_length ? left_length : right_length);
    if (order) return order;
    return (left_length > right_length) - (left_length < right_length);
}

/* The context's tags: the raw tags and the extra tags, deduplicated and sorted; NULL (no error) to defer. */
static PyObject *context_tags(const char *raw, Py_ssize_t length, PyObject *extra, PyObject *strings,
                              Py_ssize_t limit) {
    Py_ssize_t extra_count = PyTuple_GET_SIZE(extra), count = extra_count;
    for (Py_ssize_t i = 0; i < length; i++) count += raw[i] == ',';
    if (length > 0) count += 1;
    PyObject **all = PyMem_Malloc((count ? count : 1) * sizeof *all);
    if (all == NULL) { PyErr_NoMemory(); return NULL; }
    Py_ssize_t filled = 0;
    PyObject *result = NULL;
    for (Py_ssize_t start = 0; length > 0 && start <= length;) {
        const char *comma = memchr(raw + start, ',', length - start);
        Py_ssize_t end = comma ? comma - raw : length;
        Py_ssize_t size = end - start;
        const char *tag = raw + start;
        if (size == 0 || (size >= 5 && memcmp(tag, "host:", 5) == 0) ||
            (size >= 12 && memcmp(tag, "dd.internal.", 12) == 0))
            goto done;  /* the enricher's careful path */
        PyObject *text = PyUnicode_DecodeUTF8(tag, size, NULL);
        if (text == NULL) { PyErr_Clear(); goto done; }  /* invalid UTF-8: Python replaces it */
        all[filled++] = text;
        start = end + 1;
    }
    for (Py_ssize_t i = 0; i < extra_count; i++) {
        Py_INCREF(PyTuple_GET_ITEM(extra, i));
        all[filled++] = PyTuple_GET_ITEM(extra, i);
    }
    qsort(all, filled, sizeof *all, compare_strings);
    Py_ssize_t unique = 0;
    for (Py_ssize_t i = 0; i < filled; i++) {
        if (unique && compare_strings(&all[unique - 1], &all[i]) == 0) { Py_DECREF(all[i]); continue; }
        all[unique++] = all[i];
    }
    filled = unique;
    result = PyTuple_New(unique);
    for (Py_ssize_t i = 0; result != NULL && i < unique; i++) {
        PyObject *tag = shared(strings, limit, all[i]);
        if (tag == NULL) { Py_CLEAR(result); break; }
        PyTuple_SET_ITEM(result, i, tag);
    }
done:
    for (Py_ssize_t i = 0; i < filled; i++) Py_DECREF(all[i]);
    PyMem_Free(all);
    return result;
}

typedef struct {
    PyObject *context_type, *shape_type, *hostname, *extra, *blocklist, *strings, *slot_of, *copy_slot_of,
             *tag_rule_names;
    Py_ssize_t strings_limit, shape_limit;
    int origins;  /* a container tagger adds origin tags: a line with c:, e: or card: is Python's to learn */
} Learner;

static int unpack_learner(PyObject *learner, Learner *out) {
    return PyArg_ParseTuple(learner, "OOOO!O!O!nOOnO!p", &out->context_type, &out->shape_type, &out->hostname, &PyTuple_Type, &out->extra,
                            &PyFrozenSet_Type, &out->blocklist, &PyDict_Type, &out->strings, &out->strings_limit,
                            &out->slot_of, &out->copy_slot_of, &out->shape_limit, &PyFrozenSet_Type,
                            &out->tag_rule_names, &out->origins);
}

/* c:, e: or card: (the fields that say where a line comes from). */
static int origin_field(const char *field, Py_ssize_t length) {
    return (length >= 2 && field[1] == ':' && (field[0] == 'c' || field[0] == 'e')) ||
           (length >= 5 && memcmp(field, "card:", 5) == 0);
}

/* tuple.__new__(Shape, fields): the NamedTuple without its Python-level __new__; steals `fields`. */
static PyObject *new_shape(PyObject *shape_type, PyObject *fields) {
    if (fields == NULL) return NULL;
    PyObject *arguments = PyTuple_Pack(1, fields);
    Py_DECREF(fields);
    if (arguments == NULL) return NULL;
    PyObject *shape = PyTuple_Type.tp_new((PyTypeObject *)shape_type, arguments, NULL);
    Py_DECREF(arguments);
    return shape;
}

static PyObject *learn(const char *line, Py_ssize_t length, const char *colon, const char *bar, const Learner *learner,
                       PyObject *shapes, PyObject *key) {
    PyObject *context_type = learner->context_type, *hostname = learner->hostname, *extra = learner->extra,
             *blocklist = learner->blocklist, *strings = learner->strings, *slot_of = learner->slot_of,
             *copy_slot_of = learner->copy_slot_of;
    Py_ssize_t strings_limit = learner->strings_limit, shape_limit = learner->shape_limit;
    Py_ssize_t name_length = colon - line;
    if (name_length == 0 || memchr(line, '|', name_length) || memchr(colon + 1, ':', bar - colon - 1)) return NULL;
    if (length >= 3 && (memcmp(line, "_e{", 3) == 0 || memcmp(line, "_sc", 3) == 0)) return NULL;  /* not metrics */
    /* The type, then the optional fields. */
    const char *end = line + length, *field = bar + 1;
    const char *type_end = memchr(field, '|', end - field);
    if (type_end == NULL) type_end = end;
    int kind = -1;
    for (int i = 0; i < 6; i++) {
        size_t size = strlen(TYPE_NAMES[i]);
        if ((size_t)(type_end - field) == size && memcmp(field, TYPE_NAMES[i], size) == 0) kind = TYPE_KINDS[i];
    }
    if (kind < 0) return NULL;
    double rate = 1.0;
    const char *tags = NULL;
    Py_ssize_t tags_length = 0;
    for (field = type_end; field < end;) {
        field++;  /* past the '|' */
        const char *next = memchr(field, '|', end - field);
        if (next == NULL) next = end;
        if (next > field && *field == '#') {
            tags = field + 1;
            tags_length = next - field - 1;
        } else if (next > field && *field == '@') {
            if (!parse_number(field + 1, next - field - 1, &rate)) return NULL;
        } else if (next > field && *field == 'T') {
            return NULL;  /* timestamped: the no-aggregation path */
        } else if (learner->origins && origin_field(field, next - field)) {
            return NULL;  /* its origin's tags: Python asks the tagger */
        }
        field = next;
    }
    double number;
    if (kind == SET ? bar == colon + 1 : !parse_number(colon + 1, bar - colon - 1, &number)) return NULL;
    PyObject *name = PyUnicode_DecodeUTF8(line, name_length, NULL);
    if (name == NULL) { PyErr_Clear(); return NULL; }
    PyObject *shape = NULL, *context = NULL, *tag_tuple = NULL, *shared_name = NULL, *shared_host = NULL;
    int ruled = PySet_Contains(learner->tag_rule_names, name);
    if (ruled != 0) goto done;  /* an error, or a metric_tag_filterlist metric: Python learns it */
    int blocked = PySet_Contains(blocklist, name);
    if (blocked < 0) goto done;
    if (blocked) {
        shape = new_shape(learner->shape_type, Py_BuildValue("(nidn)", (Py_ssize_t)-1, BLOCKED, 1.0, (Py_ssize_t)-1));
    } else {
        tag_tuple = context_tags(tags ? tags : "", tags_length, extra, strings, strings_limit);
        if (tag_tuple == NULL) goto done;
        shared_name = shared(strings, strings_limit, name);
        shared_host = shared_name ? shared(strings, strings_limit, hostname) : NULL;
        if (shared_host == NULL) goto done;
        PyObject *fields = PyTuple_Pack(3, shared_name, shared_host, tag_tuple);
        PyObject *arguments = fields ? PyTuple_Pack(1, fields) : NULL;
        Py_XDECREF(fields);
        if (arguments == NULL) goto done;
        /* tuple.__new__(Context, fields): the NamedTuple without its Python-level __new__ */
        context = PyTuple_Type.tp_new((PyTypeObject *)context_type, arguments, NULL);
        Py_DECREF(arguments);
        if (context == NULL) goto done;
        PyObject *slot = PyObject_CallOneArg(slot_of, context);
        if (slot == NULL) goto done;
        PyObject *copy = kind == HISTOGRAM ? PyObject_CallOneArg(copy_slot_of, context) : PyLong_FromLong(-1);
        if (copy == NULL) { Py_DECREF(slot); goto done; }
        double stored = rate;
        if (kind == COUNTER) stored = 1.0 / (rate > 0 && rate <= 1 ? rate : 1.0);  /* the counter's scale */
        shape = new_shape(learner->shape_type, Py_BuildValue("(NidN)", slot, kind, stored, copy));
    }
    if (shape == NULL) goto done;
    if (PyDict_GET_SIZE(shapes) >= shape_limit) PyDict_Clear(shapes);
    if (PyDict_SetItem(shapes, key, shape) < 0) Py_CLEAR(shape);
    else Py_DECREF(shape);  /* `shapes` holds it: the borrowed reference stays valid */
done:
    Py_DECREF(name);
    Py_XDECREF(context);
    Py_XDECREF(tag_tuple);
    Py_XDECREF(shared_name);
    Py_XDECREF(shared_host);
    return shape;
}

/* The five dicts of a Bucket (relay/pipeline/buckets.py), read once per call: new references. */
typedef struct { PyObject *gauges, *counters, *sets, *histograms, *distributions; } BucketDicts;

static void release_bucket(BucketDicts *b) {
    Py_XDECREF(b->gauges);
    Py_XDECREF(b->counters);
    Py_XDECREF(b->sets);
    Py_XDECREF(b->histograms);
    Py_XDECREF(b->distributions);
}

static int open_bucket(PyObject *bucket, BucketDicts *b) {
    static const char *const names[] = {"gauges", "counters", "sets", "histograms", "distributions"};
    PyObject **fields[] = {&b->gauges, &b->counters, &b->sets, &b->histograms, &b->distributions};
    for (int i = 0; i < 5; i++) {
        *fields[i] = PyObject_GetAttrString(bucket, names[i]);
        if (*fields[i] == NULL) return 0;
        if (!PyDict_Check(*fields[i])) {
            PyErr_Format(PyExc_TypeError, "bucket.%s must be a dict", names[i]);
            return 0;
        }
    }
    return 1;
}

static PyObject *ingest_lines(PyObject *data, Py_ssize_t offset, PyObject *shapes, const BucketDicts *b,
                              PyObject *learner, const Learner *unpacked, int cached);

/* SHAPE CACHE. A line's shape is looked up here first, by a hash of its two spans (the name and colon, and what
 * follows the value), without making the bytes key the dict needs: the key's allocation, its SipHash and the dict's
 * probe were a third of a packed counter's cost (issue 26). A direct-mapped table of CACHE_SIZE entries, each
 * holding its own reference to a key and the shape the dict has for it; a hit compares the bytes, so a collision
 * only costs the dict's path. Entries are only ever added to the dict the table mirrors (relay/pipeline/ingest.py
 * replaces a dict rather than clearing it, and drops no key); the table holds that dict, so that its address
 * cannot name another one, and starts over when handed another dict (or when learn() clears this one). */
#define CACHE_SIZE (1 << 16)

typedef struct {
    uint64_t hash;
    PyObject *key;    /* bytes b"name:suffix", or NULL */
    PyObject *shape;
} CacheEntry;

static CacheEntry *cache_entries;
static PyObject *cache_dict;

static void cache_reset(PyObject *shapes) {
    if (cache_entries == NULL) cache_entries = PyMem_Calloc(CACHE_SIZE, sizeof *cache_entries);
    for (Py_ssize_t i = 0; cache_entries != NULL && i < CACHE_SIZE; i++) {
        Py_CLEAR(cache_entries[i].key);
        Py_CLEAR(cache_entries[i].shape);
    }
    Py_XINCREF(shapes);
    Py_XSETREF(cache_dict, shapes);
}

static inline uint64_t mix_bytes(uint64_t hash, const char *bytes, Py_ssize_t length) {
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, bytes, 8);
        hash = (hash ^ word) * 0x9E3779B97F4A7C15ULL;
        hash ^= hash >> 29;
        bytes += 8;
        length -= 8;
    }
    uint64_t word = 0;
    memcpy(&word, bytes, (size_t)length);
    hash = (hash ^ word ^ ((uint64_t)length << 56)) * 0x9E3779B97F4A7C15ULL;
    return hash ^ (hash >> 32);
}

/* The cached shape of the key name_with_colon + suffix (a borrowed reference), or NULL. */
static inline PyObject *cache_get(uint64_t hash, const char *name, Py_ssize_t name_length, const char *suffix,
                                  Py_ssize_t suffix_length) {
    CacheEntry *entry = &cache_entries[hash & (CACHE_SIZE - 1)];
    if (entry->key == NULL || entry->hash != hash || PyBytes_GET_SIZE(entry->key) != name_length + suffix_length)
        return NULL;
    const char *key = PyBytes_AS_STRING(entry->key);
    if (memcmp(key, name, (size_t)name_length) != 0 || memcmp(key + name_length, suffix, (size_t)suffix_length))
        return NULL;
    return entry->shape;
}

static inline void cache_put(uint64_t hash, PyObject *key, PyObject *shape) {
    CacheEntry *entry = &cache_entries[hash & (CACHE_SIZE - 1)];
    Py_INCREF(key);
    Py_INCREF(shape);
    Py_XSETREF(entry->key, key);
    Py_XSETREF(entry->shape, shape);
    entry->hash = hash;
}


static PyObject *ingest(PyObject *module, PyObject *args) {
    PyObject *data, *shapes, *bucket, *learner;
    Py_ssize_t offset;
    int cached = 1;
    if (!PyArg_ParseTuple(args, "SnO!OO|p", &data, &offset, &PyDict_Type, &shapes, &bucket, &learner, &cached))
        return NULL;
    Learner unpacked;
    if (learner != Py_None && !unpack_learner(learner, &unpacked)) return NULL;
    if (cached && (shapes != cache_dict || cache_entries == NULL)) cache_reset(shapes);
    if (cached && cache_entries == NULL) return PyErr_NoMemory();
    BucketDicts dicts = {NULL, NULL, NULL, NULL, NULL};
    PyObject *result = open_bucket(bucket, &dicts)
        ? ingest_lines(data, offset, shapes, &dicts, learner, &unpacked, cached) : NULL;
    release_bucket(&dicts);
    return result;
}

/* The lines of `data` from `offset` whose shape is known (or learned here), applied to the bucket's dicts; stops
 * at the first line it cannot take. Returns (accepted, blocklisted, offset of the line it stopped at). */
static PyObject *ingest_lines(PyObject *data, Py_ssize_t offset, PyObject *shapes, const BucketDicts *b,
                              PyObject *learner, const Learner *unpacked, int cached) {
    PyObject *gauges = b->gauges, *counters = b->counters, *sets = b->sets, *histograms = b->histograms,
             *distributions = b->distributions;
    const char *buffer = PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data), accepted = 0, blocked = 0;
    while (offset < size) {
        const char *line = buffer + offset;
        const char *newline = memchr(line, '\n', size - offset);
        Py_ssize_t length = newline ? newline - line : size - offset;
        if (length == 0) { offset += 1; continue; }
        const char *colon = memchr(line, ':', length);
        const char *bar = colon ? memchr(colon + 1, '|', length - (colon + 1 - line)) : NULL;
        if (bar == NULL) break;
        Py_ssize_t name_length = colon - line, suffix_length = length - (bar + 1 - line);
        uint64_t hash = mix_bytes(mix_bytes(0, line, name_length + 1), bar + 1, suffix_length);
        PyObject *shape = cached ? cache_get(hash, line, name_length + 1, bar + 1, suffix_length) : NULL;
        if (shape == NULL) {
            PyObject *key = PyBytes_FromStringAndSize(NULL, name_length + 1 + suffix_length);
            if (key == NULL) return NULL;
            char *key_bytes = PyBytes_AS_STRING(key);
            memcpy(key_bytes, line, name_length + 1);  /* the name and its colon */
            memcpy(key_bytes + name_length + 1, bar + 1, suffix_length);
            shape = PyDict_GetItemWithError(shapes, key);
            if (shape == NULL && !PyErr_Occurred() && learner != Py_None) {
                Py_ssize_t known = PyDict_GET_SIZE(shapes);
                shape = learn(line, length, colon, bar, unpacked, shapes, key);
                if (cached && shape != NULL && PyDict_GET_SIZE(shapes) <= known) cache_reset(shapes);  /* cleared */
            }
            if (cached && shape != NULL) cache_put(hash, key, shape);
            Py_DECREF(key);
        }
        if (shape == NULL) {
            if (PyErr_Occurred()) return NULL;
            break;  /* a shape not seen yet that C does not learn: Python learns it */
        }
        if (!PyTuple_Check(shape) || PyTuple_GET_SIZE(shape) != 4) break;
        PyObject *slot = PyTuple_GET_ITEM(shape, 0), *rate = PyTuple_GET_ITEM(shape, 2);
        int kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(shape, 1));
        if (!PyFloat_Check(rate)) break;
        const char *value = colon + 1;
        Py_ssize_t value_length = bar - value;
        if (kind == SET) {
            if (value_length == 0) break;
            if (add_member(sets, slot, value, value_length) < 0) return NULL;
        } else {
            double number;
            if (!parse_number(value, value_length, &number)) break;
            if (kind == BLOCKED) {
                blocked++;
            } else if (apply_number(kind, number, slot, rate, PyTuple_GET_ITEM(shape, 3), gauges, counters,
                                    histograms, distributions) < 0) {
                return NULL;
            }
        }
        accepted++;
        offset += length + 1;
    }
    return Py_BuildValue("nnn", accepted, blocked, offset < size ? offset : size);
}

/* shard(data, count) -> list of `count` bytes: the lines of `data`, each sent to the worker that owns its metric
 * name (CRC-32 of the bytes before the first ':', zlib's, as shard_lines in Python), so that every context lives in
 * exactly one worker, whichever of the two split the batch. */
static uint32_t crc_table[256];

static void make_crc_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

/* CRC-32 as zlib.crc32 computes it (reflected, polynomial 0xEDB88320). */
static uint32_t crc32_of(const unsigned char *data, Py_ssize_t length) {
    uint32_t c = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < length; i++) c = crc_table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static PyObject *shard(PyObject *module, PyObject *args) {
    PyObject *data;
    Py_ssize_t count;
    if (!PyArg_ParseTuple(args, "Sn", &data, &count) || count < 1 || count > 1024) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "count must be 1..1024");
        return NULL;
    }
    const char *buffer = PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    char *out = PyMem_Malloc(size + 1);  /* every shard together holds at most the input plus newlines */
    Py_ssize_t *starts = PyMem_Calloc(count + 1, sizeof *starts), *used = PyMem_Calloc(count, sizeof *used);
    PyObject *result = NULL;
    if (out == NULL || starts == NULL || used == NULL) { PyErr_NoMemory(); goto done; }
    /* First pass: the bytes each shard needs; second pass: copy the lines in place. */
    for (int pass = 0; pass < 2; pass++) {
        for (Py_ssize_t offset = 0; offset < size;) {
            const char *line = buffer + offset;
            const char *newline = memchr(line, '\n', size - offset);
            Py_ssize_t length = newline ? newline - line : size - offset;
            if (length > 0) {
                const char *colon = memchr(line, ':', length);
                Py_ssize_t name_length = colon ? colon - line : length;
                Py_ssize_t target = crc32_of((const unsigned char *)line, name_length) % (uint32_t)count;
                if (pass == 0) {
                    starts[target + 1] += length + 1;
                } else {
                    memcpy(out + starts[target] + used[target], line, length);
                    used[target] += length;
                    out[starts[target] + used[target]++] = '\n';
                }
            }
            offset += length + 1;
        }
        if (pass == 0)
            for (Py_ssize_t i = 0; i < count; i++) starts[i + 1] += starts[i];
    }
    result = PyList_New(count);
    for (Py_ssize_t i = 0; result != NULL && i < count; i++) {
        PyObject *part = PyBytes_FromStringAndSize(out + starts[i], used[i]);
        if (part == NULL) { Py_CLEAR(result); break; }
        PyList_SET_ITEM(result, i, part);
    }
done:
    PyMem_Free(out);
    PyMem_Free(starts);
    PyMem_Free(used);
    return result;
}

static long sketch_key(double value, double min_value, double log_gamma, long bias, long max_key, long inf_key) {
    if (value < 0) return -sketch_key(-value, min_value, log_gamma, bias, max_key, inf_key);
    if (value < min_value) return 0;
    double k = nearbyint(log(value) / log_gamma) + (double)bias;
    if (k > (double)max_key) return inf_key;
    return k < 1 ? 1 : (long)k;
}

/* Counts per key for one call, indexed by key + 32768 (keys are within [-32767, 32767]); only the touched
 * entries are read back into the dict and reset, so a call costs its samples plus its distinct keys. */
static long long key_counts[65536];
static int touched[65536];

static PyObject *sketch_insert(PyObject *self, PyObject *args) {
    PyObject *samples, *bins;
    long long count;
    double total, low, high, min_value, log_gamma;
    long bias, max_key, inf_key;
    if (!PyArg_ParseTuple(args, "O!O!(Lddd)(ddlll)", &PyList_Type, &samples, &PyDict_Type, &bins, &count, &total,
                          &low, &high, &min_value, &log_gamma, &bias, &max_key, &inf_key))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(samples), distinct = 0;
    int failed = 0;
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        PyObject *item = PyList_GET_ITEM(samples, i);
        double value, rate = 1.0;
        if (PyFloat_CheckExact(item)) {
            value = PyFloat_AS_DOUBLE(item);
        } else if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 2) {
            value = PyFloat_AsDouble(PyTuple_GET_ITEM(item, 0));
            rate = PyFloat_AsDouble(PyTuple_GET_ITEM(item, 1));
            if (PyErr_Occurred()) { failed = 1; break; }
        } else {
            PyErr_SetString(PyExc_TypeError, "a sample is a float or a (value, rate) tuple");
            failed = 1;
            break;
        }
        long long times = (rate > 0 && rate < 1) ? (long long)(1.0 / rate) : 1;
        int index = (int)sketch_key(value, min_value, log_gamma, bias, max_key, inf_key) + 32768;
        if (key_counts[index] == 0) touched[distinct++] = index;
        key_counts[index] += times;
        count += times;
        total += value * (double)times;
        if (value < low) low = value;
        if (value > high) high = value;
    }
    for (Py_ssize_t t = 0; t < distinct; t++) {
        int index = touched[t];
        long long add = key_counts[index];
        key_counts[index] = 0;
        if (failed) continue;  /* still reset every touched entry */
        PyObject *key = PyLong_FromLong(index - 32768);
        PyObject *current = key ? PyDict_GetItemWithError(bins, key) : NULL;
        PyObject *updated = NULL;
        if (key != NULL && !(current == NULL && PyErr_Occurred()))
            updated = PyLong_FromLongLong((current ? PyLong_AsLongLong(current) : 0) + add);
        failed = updated == NULL || PyDict_SetItem(bins, key, updated) < 0;
        Py_XDECREF(updated);
        Py_XDECREF(key);
    }
    if (failed) return NULL;
    return Py_BuildValue("(Lddd)", count, total, low, high);
}

static Py_ssize_t varint_size(uint64_t value) {
    Py_ssize_t size = 1;
    while (value > 0x7F) { value >>= 7; size++; }
    return size;
}

static char *put_varint(char *out, uint64_t value) {
    while (value > 0x7F) { *out++ = (char)((value & 0x7F) | 0x80); value >>= 7; }
    *out++ = (char)value;
    return out;
}

static char *put_field(char *out, char tag, const char *data, Py_ssize_t length) {
    *out++ = tag;
    out = put_varint(out, (uint64_t)length);
    memcpy(out, data, length);
    return out + length;
}

static PyObject *series_item(PyObject *self, PyObject *args) {
    PyObject *name, *host, *tags, *points;
    long long type, interval;
    if (!PyArg_ParseTuple(args, "UUO!O!LL", &name, &host, &PyTuple_Type, &tags, &PyList_Type, &points, &type,
                          &interval))
        return NULL;
    Py_ssize_t name_length, host_length, tag_count = PyTuple_GET_SIZE(tags), point_count = PyList_GET_SIZE(points);
    const char *name_text = PyUnicode_AsUTF8AndSize(name, &name_length);
    const char *host_text = PyUnicode_AsUTF8AndSize(host, &host_length);
    if (name_text == NULL || host_text == NULL) return NULL;
    /* First pass: sizes (and refuse device tags). */
    Py_ssize_t resource = 2 + 4 + 1 + varint_size(host_length) + host_length;  /* type "host", name */
    Py_ssize_t size = 1 + varint_size(resource) + resource + 1 + varint_size(name_length) + name_length;
    for (Py_ssize_t i = 0; i < tag_count; i++) {
        PyObject *tag = PyTuple_GET_ITEM(tags, i);
        Py_ssize_t length;
        const char *text = PyUnicode_Check(tag) ? PyUnicode_AsUTF8AndSize(tag, &length) : NULL;
        if (text == NULL) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "tags must be str");
            return NULL;
        }
        if (length >= 7 && memcmp(text, "device:", 7) == 0) Py_RETURN_NONE;
        size += 1 + varint_size(length) + length;
    }
    for (Py_ssize_t i = 0; i < point_count; i++) {
        PyObject *point = PyList_GET_ITEM(points, i);
        if (!PyTuple_Check(point) || PyTuple_GET_SIZE(point) != 2) {
            PyErr_SetString(PyExc_TypeError, "a point is a (timestamp, value) tuple");
            return NULL;
        }
        long long timestamp = PyLong_AsLongLong(PyTuple_GET_ITEM(point, 0));
        if (timestamp == -1 && PyErr_Occurred()) return NULL;
        Py_ssize_t body = 1 + 8 + 1 + varint_size((uint64_t)timestamp);
        size += 1 + varint_size(body) + body;
    }
    size += 1 + varint_size((uint64_t)type) + 1 + varint_size((uint64_t)interval);
    Py_ssize_t total = 1 + varint_size(size) + size;
    PyObject *result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) return NULL;
    /* Second pass: bytes. */
    char *out = PyBytes_AS_STRING(result);
    *out++ = 0x0a;
    out = put_varint(out, (uint64_t)size);
    *out++ = 0x0a;
    out = put_varint(out, (uint64_t)resource);
    out = put_field(out, 0x0a, "host", 4);
    out = put_field(out, 0x12, host_text, host_length);
    out = put_field(out, 0x12, name_text, name_length);
    for (Py_ssize_t i = 0; i < tag_count; i++) {
        Py_ssize_t length;
        const char *text = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(tags, i), &length);
        out = put_field(out, 0x1a, text, length);
    }
    for (Py_ssize_t i = 0; i < point_count; i++) {
        PyObject *point = PyList_GET_ITEM(points, i);
        long long timestamp = PyLong_AsLongLong(PyTuple_GET_ITEM(point, 0));
        double value = PyFloat_AsDouble(PyTuple_GET_ITEM(point, 1));
        if (value == -1.0 && PyErr_Occurred()) { Py_DECREF(result); return NULL; }
        *out++ = 0x22;
        out = put_varint(out, (uint64_t)(1 + 8 + 1 + varint_size((uint64_t)timestamp)));
        *out++ = 0x09;
        if (PyFloat_Pack8(value, out, 1) < 0) { Py_DECREF(result); return NULL; }
        out += 8;
        *out++ = 0x10;
        out = put_varint(out, (uint64_t)timestamp);
    }
    *out++ = 0x28;
    out = put_varint(out, (uint64_t)type);
    *out++ = 0x40;
    out = put_varint(out, (uint64_t)interval);
    return result;
}

/* histogram_pack(samples, values, rates) -> rates
 *
 * Appends a histogram's samples (floats, or (value, rate) tuples) to `values`, a bytearray of doubles, and their
 * rates to `rates` (a bytearray of doubles made, with 1.0 for the samples before, at the first tuple; None while
 * every sample is a plain float): 8 or 16 bytes a sample instead of a Python float in a list. */
static int append_doubles(PyObject *array, const double *data, Py_ssize_t count) {
    Py_ssize_t size = PyByteArray_GET_SIZE(array);
    if (PyByteArray_Resize(array, size + count * (Py_ssize_t)sizeof(double)) < 0) return -1;
    memcpy(PyByteArray_AS_STRING(array) + size, data, count * sizeof(double));
    return 0;
}

static PyObject *histogram_pack(PyObject *self, PyObject *args) {
    PyObject *samples, *values, *rates;
    if (!PyArg_ParseTuple(args, "O!O!O", &PyList_Type, &samples, &PyByteArray_Type, &values, &rates)) return NULL;
    if (rates != Py_None && !PyByteArray_Check(rates)) {
        PyErr_SetString(PyExc_TypeError, "rates is a bytearray or None");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(samples);
    double *unpacked = PyMem_Malloc((count ? count : 1) * 2 * sizeof(double));
    if (unpacked == NULL) return PyErr_NoMemory();
    double *sample_rates = unpacked + count;
    int weighted = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(samples, i);
        sample_rates[i] = 1.0;
        if (PyFloat_CheckExact(item)) {
            unpacked[i] = PyFloat_AS_DOUBLE(item);
        } else if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 2) {
            unpacked[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(item, 0));
            sample_rates[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(item, 1));
            weighted = 1;
        } else {
            PyErr_SetString(PyExc_TypeError, "a sample is a float or a (value, rate) tuple");
        }
        if (PyErr_Occurred()) { PyMem_Free(unpacked); return NULL; }
    }
    Py_INCREF(rates);
    if (weighted && rates == Py_None) {  /* the samples packed before were all plain: rate 1 */
        Py_ssize_t before = PyByteArray_GET_SIZE(values) / (Py_ssize_t)sizeof(double);
        Py_DECREF(rates);
        rates = PyByteArray_FromStringAndSize(NULL, 0);
        double one = 1.0;
        for (Py_ssize_t i = 0; rates != NULL && i < before; i++)
            if (append_doubles(rates, &one, 1) < 0) Py_CLEAR(rates);
    }
    if (rates == NULL || append_doubles(values, unpacked, count) < 0 ||
        (rates != Py_None && append_doubles(rates, sample_rates, count) < 0)) {
        Py_XDECREF(rates);
        PyMem_Free(unpacked);
        return NULL;
    }
    PyMem_Free(unpacked);
    return rates;
}

/* histogram_summary(values, rates, percentiles) -> (count, sum, min, max, median, (percentile values)) | None
 *
 * The arithmetic of relay/pipeline/buckets.py's histogram_points over packed samples, with its exact results: the
 * same sums in the same order, the same stable sort (ties keep their order), the same weighted nearest rank.
 * None when a weight is too large for exact integers here (a rate under 1e-15): Python then decides. */
typedef struct {
    double value;
    long long weight;
    Py_ssize_t index;
} Weighted;

static int compare_weighted(const void *a, const void *b) {
    const Weighted *left = a, *right = b;
    if (left->value != right->value) return left->value < right->value ? -1 : 1;
    if (left->weight != right->weight) return left->weight < right->weight ? -1 : 1;
    return (left->index > right->index) - (left->index < right->index);
}

static double weighted_rank(const Weighted *ordered, Py_ssize_t n, long long target) {
    long long cumulative = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        cumulative += ordered[i].weight;
        if (cumulative > target) return ordered[i].value;
    }
    return ordered[n - 1].value;
}

#define MAX_WEIGHT_TOTAL (1LL << 50)

static PyObject *histogram_summary(PyObject *self, PyObject *args) {
    Py_buffer values, rates = {0};
    PyObject *rates_object, *percentiles;
    if (!PyArg_ParseTuple(args, "y*OO!", &values, &rates_object, &PyTuple_Type, &percentiles)) return NULL;
    if (rates_object != Py_None && PyObject_GetBuffer(rates_object, &rates, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&values);
        return NULL;
    }
    Py_ssize_t n = values.len / (Py_ssize_t)sizeof(double), p_count = PyTuple_GET_SIZE(percentiles);
    const double *value = values.buf, *rate = rates_object != Py_None ? rates.buf : NULL;
    PyObject *result = NULL;
    Weighted *ordered = NULL;
    if (n == 0 || (rate != NULL && rates.len != values.len)) {
        PyErr_SetString(PyExc_ValueError, "no sample, or not one rate per sample");
        goto done;
    }
    ordered = PyMem_Malloc(n * sizeof *ordered);
    if (ordered == NULL) { PyErr_NoMemory(); goto done; }
    double total = 0.0;
    long long count = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        long long weight = 1;
        if (rate != NULL) {
            double effective = rate[i] > 0 && rate[i] <= 1 ? rate[i] : 1.0;
            double inverse = 1.0 / effective;
            if (inverse >= (double)MAX_WEIGHT_TOTAL) { result = Py_None; Py_INCREF(result); goto done; }
            weight = (long long)inverse;
            total += value[i] / effective;  /* in arrival order, as Python adds them */
        }
        count += weight;
        if (count >= MAX_WEIGHT_TOTAL) { result = Py_None; Py_INCREF(result); goto done; }
        ordered[i] = (Weighted){value[i], weight, i};
    }
    qsort(ordered, n, sizeof *ordered, compare_weighted);
    if (rate == NULL)
        for (Py_ssize_t i = 0; i < n; i++) total += ordered[i].value;  /* unweighted: the sorted order */
    PyObject *ranks = PyTuple_New(p_count);
    for (Py_ssize_t i = 0; ranks != NULL && i < p_count; i++) {
        long long percentile = PyLong_AsLongLong(PyTuple_GET_ITEM(percentiles, i));
        if (percentile == -1 && PyErr_Occurred()) { Py_CLEAR(ranks); break; }
        long long target = percentile * count - 1;
        target = (target < 0 ? 0 : target) / 100;
        double ranked = rate == NULL ? ordered[target < n ? target : n - 1].value : weighted_rank(ordered, n, target);
        PyObject *number = PyFloat_FromDouble(ranked);
        if (number == NULL) { Py_CLEAR(ranks); break; }
        PyTuple_SET_ITEM(ranks, i, number);
    }
    if (ranks == NULL) goto done;
    double median = rate == NULL ? ordered[(count - 1) / 2].value : weighted_rank(ordered, n, (count - 1) / 2);
    result = Py_BuildValue("(LddddN)", count, total, ordered[0].value, ordered[n - 1].value, median, ranks);
done:
    PyMem_Free(ordered);
    PyBuffer_Release(&values);
    if (rates_object != Py_None && rates.obj != NULL) PyBuffer_Release(&rates);
    return result;
}

static PyMethodDef methods[] = {
    {"histogram_pack", histogram_pack, METH_VARARGS, "Pack histogram samples into doubles (relay/pipeline/buckets.py)."},
    {"histogram_summary", histogram_summary, METH_VARARGS, "A histogram's aggregates (relay/pipeline/buckets.py)."},
    {"series_item", series_item, METH_VARARGS, "One MetricPayload series entry (relay/pipeline/serialize.py)."},
    {"sketch_insert", sketch_insert, METH_VARARGS, "Insert distribution samples into sketch bins (relay/pipeline/sketch.py)."},
    {"ingest", ingest, METH_VARARGS, "Apply the lines of a datagram whose shape is known (see relay/pipeline/ingest.py)."},
    {"shard", shard, METH_VARARGS, "Split a datagram's lines between workers by metric name (relay/runtime/workers.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "relay._speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) {
    make_crc_table();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    static const char *const kinds[] = {"GAUGE", "COUNTER", "SET", "HISTOGRAM", "DISTRIBUTION", "BLOCKED"};
    for (int kind = GAUGE; kind <= BLOCKED; kind++) {
        if (PyModule_AddIntConstant(m, kinds[kind], kind) < 0) { Py_DECREF(m); return NULL; }
    }
    return m;
}

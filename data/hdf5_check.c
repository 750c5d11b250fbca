/* hdf5_check.c: the parts of an HDF5 file libhdf5 1.10 trusts, checked before it reads them
 * (see hdf5_check.h): the root group's attributes, the object headers of datasets, the global
 * heap collection of a variable-length string, the types of numbers. The file is read with pread
 * through our own descriptor, every length and offset bounded by the file's size; the layouts are
 * those of the HDF5 file format specification (object headers version 1 and 2, attribute
 * messages 1 to 3, datatype messages 1 to 3, filter pipelines 1 and 2, the global heap).
 * The walk of the collection follows libhdf5's own (H5HG__cache_heap_deserialize), so what it
 * accepts is what libhdf5 loads in bounded time. */
#include "data/hdf5_check.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trainer/common.h"

#define CHECK_MAX_CHUNKS 64                      /* object header chunks followed */
#define CHECK_MAX_CHUNK_BYTES (4u << 20)         /* one chunk of an object header */
#define CHECK_MAX_COLLECTION_BYTES (64ull << 20) /* a global heap collection */
#define MSG_DATASPACE 0x01
#define MSG_DATATYPE 0x03
#define MSG_FILTERS 0x0B
#define MSG_ATTRIBUTE 0x0C
#define MSG_CONTINUATION 0x10
#define MSG_FLAG_SHARED 0x02 /* the message is a reference to one stored elsewhere */
#define NO_SUPERBLOCK (-1) /* reader_open: not an HDF5 file at all */

typedef struct Reader {
    int fd;
    uint64_t file_size, base; /* addresses in the file are relative to base (the user block) */
    size_t sizeof_addr, sizeof_size;
    const char *path, *name;
    const char *object; /* whose object header is walked: "the root group", "dataset \"x\"" */
} Reader;

static int bad(const Reader *r, const char *what)
{
    char shown[600], attr[300] = "";
    if (r->name) snprintf(attr, sizeof(attr), "attribute \"%s\": ", r->name);
    return ds_error(DS_ERR_INPUT,
                    "%s: %s%s; refused before libhdf5 reads it (damage there can make libhdf5 "
                    "hang, read out of bounds or exhaust memory)",
                    ds_printable(shown, sizeof(shown), r->path, 500), attr, what);
}

/* bad() of "<before> <the object whose header is walked> <after>" */
static int bad_in(const Reader *r, const char *before, const char *after)
{
    char text[300];
    snprintf(text, sizeof(text), "%s %s %s", before, r->object ? r->object : "the root group",
             after);
    return bad(r, text);
}

/* len bytes at file address addr (relative to base) into a new buffer; NULL when they are not
 * all within the file. */
static uint8_t *read_at(const Reader *r, uint64_t addr, uint64_t len)
{
    if (len == 0 || addr > r->file_size || r->base > r->file_size - addr ||
        len > r->file_size - addr - r->base)
        return NULL;
    uint8_t *buf = malloc((size_t)len);
    if (!buf) return NULL;
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(r->fd, buf + got, (size_t)(len - got), (off_t)(r->base + addr + got));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            free(buf);
            return NULL;
        }
        got += (size_t)n;
    }
    return buf;
}

static uint64_t le(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

typedef struct Chunk {
    uint64_t addr, len;
    int v2; /* a version 2 chunk: "OHDR" prefix or "OCHK", a checksum at the end */
} Chunk;

/* Called for each message of an object header (the root group's, or r->object's): its type and
 * data; a non-zero return stops the walk with that status (1: found, stop quietly). */
typedef int (*MessageVisit)(const Reader *r, unsigned type, const uint8_t *data, size_t size,
                            void *ctx);

/* The messages of one chunk [p, end); continuation messages append to chunks. A message that
 * runs past its chunk is damage. */
static int walk_chunk(const Reader *r, const uint8_t *p, const uint8_t *end, int v2,
                      int creation_order, Chunk *chunks, int *n_chunks, MessageVisit visit,
                      void *ctx)
{
    const size_t head = v2 ? 4u + (creation_order ? 2u : 0u) : 8u;
    while ((size_t)(end - p) >= head) {
        unsigned type = v2 ? p[0] : (unsigned)le(p, 2);
        size_t size = v2 ? (size_t)le(p + 1, 2) : (size_t)le(p + 2, 2);
        const unsigned flags = v2 ? p[3] : p[4];
        const uint8_t *data = p + head;
        if (size > (size_t)(end - data))
            return bad_in(r, "a message of the object header of", "runs past its chunk");
        /* libhdf5 would decode the message it refers to from another object, unchecked */
        if ((flags & MSG_FLAG_SHARED) && (type == MSG_DATATYPE || type == MSG_DATASPACE ||
                                          type == MSG_FILTERS || type == MSG_ATTRIBUTE))
            return bad_in(r, "a datatype, dataspace, filter or attribute message of",
                          "is shared (stored in another object, as a committed datatype is), "
                          "which dstrain does not check");
        if (type == MSG_CONTINUATION) {
            if (size < r->sizeof_addr + r->sizeof_size)
                return bad_in(r, "a continuation message of the object header of", "is damaged");
            if (*n_chunks >= CHECK_MAX_CHUNKS)
                return bad_in(r, "the object header of", "has too many chunks");
            chunks[*n_chunks] =
                (Chunk){le(data, r->sizeof_addr), le(data + r->sizeof_addr, r->sizeof_size), v2};
            (*n_chunks)++;
        }
        int status = visit(r, type, data, size, ctx);
        if (status) return status;
        p = data + size;
    }
    return DS_OK;
}

/* Every message of the object header at addr (version 1 or 2, continuation chunks
 * followed, each read within the file and bounded), handed to visit. */
static int walk_header(const Reader *r, uint64_t addr, MessageVisit visit, void *ctx)
{
    uint8_t *prefix = read_at(r, addr, 16);
    if (!prefix) return bad_in(r, "the object header of", "is outside the file");
    Chunk chunks[CHECK_MAX_CHUNKS];
    int n_chunks = 0, creation_order = 0;
    size_t skip = 0; /* bytes of the first chunk before its messages */
    if (memcmp(prefix, "OHDR", 4) == 0) {
        if (prefix[4] != 2) {
            free(prefix);
            return bad_in(r, "the object header of", "has an unknown version");
        }
        const unsigned flags = prefix[5];
        creation_order = (flags & 0x04) != 0;
        skip = 6 + ((flags & 0x20) ? 16 : 0) + ((flags & 0x10) ? 4 : 0);
        const size_t width = (size_t)1 << (flags & 3);
        uint8_t *more = read_at(r, addr, skip + width);
        if (!more) {
            free(prefix);
            return bad_in(r, "the object header of", "is outside the file");
        }
        const uint64_t len = le(more + skip, width);
        free(more);
        skip += width;
        if (len > CHECK_MAX_CHUNK_BYTES) {
            free(prefix);
            return bad_in(r, "an object header chunk of", "is implausibly large");
        }
        chunks[n_chunks++] = (Chunk){addr, skip + len + 4, 1}; /* + checksum */
    } else if (prefix[0] == 1) {
        skip = 16; /* version, reserved, messages, references, size, padding */
        chunks[n_chunks++] = (Chunk){addr, 16 + le(prefix + 8, 4), 0};
    } else {
        free(prefix);
        return bad_in(r, "the object header of", "has an unknown version");
    }
    free(prefix);
    int status = DS_OK;
    for (int c = 0; c < n_chunks && status == DS_OK; c++) {
        if (chunks[c].len > CHECK_MAX_CHUNK_BYTES)
            return bad_in(r, "an object header chunk of", "is implausibly large");
        uint8_t *chunk = read_at(r, chunks[c].addr, chunks[c].len);
        if (!chunk) return bad_in(r, "an object header chunk of", "is outside the file");
        const uint8_t *p = chunk, *end = chunk + chunks[c].len;
        if (c == 0) {
            p += skip;
        } else if (chunks[c].v2) {
            if (chunks[c].len < 8 || memcmp(chunk, "OCHK", 4) != 0) {
                free(chunk);
                return bad_in(r, "a continuation chunk of the object header of", "is damaged");
            }
            p += 4;
        }
        if (chunks[c].v2) end -= 4; /* the checksum */
        if (p > end) {
            free(chunk);
            return bad_in(r, "an object header chunk of", "is damaged");
        }
        status = walk_chunk(r, p, end, chunks[c].v2, creation_order, chunks, &n_chunks, visit, ctx);
        free(chunk);
    }
    return status;
}

/* An attribute message's parts, each checked to lie within the message. */
typedef struct AttributeParts {
    unsigned version, flags;
    const char *name; /* NUL-terminated inside the message */
    const uint8_t *type, *space, *data;
    size_t type_size, space_size, data_size; /* data_size: what is left of the message */
} AttributeParts;

static int attribute_parts(const uint8_t *msg, size_t len, AttributeParts *a)
{
    if (len < 8) return 0;
    a->version = msg[0];
    a->flags = a->version == 1 ? 0 : msg[1]; /* version 1: a reserved byte libhdf5 ignores */
    if (a->version < 1 || a->version > 3) return 0;
    const size_t name_size = (size_t)le(msg + 2, 2);
    a->type_size = (size_t)le(msg + 4, 2);
    a->space_size = (size_t)le(msg + 6, 2);
    size_t at = a->version == 3 ? 9 : 8;
#define PAD8(x) (a->version == 1 ? (((x) + 7) & ~(size_t)7) : (x))
    if (at > len || name_size == 0 || PAD8(name_size) > len - at) return 0;
    a->name = (const char *)msg + at;
    if (memchr(a->name, 0, name_size) != a->name + name_size - 1) return 0;
    at += PAD8(name_size);
    if (PAD8(a->type_size) > len - at) return 0;
    a->type = msg + at;
    at += PAD8(a->type_size);
    if (PAD8(a->space_size) > len - at) return 0;
    a->space = msg + at;
    at += PAD8(a->space_size);
#undef PAD8
    a->data = msg + at;
    a->data_size = len - at;
    return 1;
}

/* Points of a dataspace message of size bytes (-1 when it is damaged); a shared one is not
 * decoded (-2). */
static int64_t space_points(const Reader *r, const uint8_t *s, size_t size)
{
    if (size < 4) return -1;
    const unsigned version = s[0], rank = s[1], flags = s[2];
    if (version != 1 && version != 2) return -1;
    if (rank > 32) return -1;
    size_t at = version == 1 ? 8 : 4;
    if (version == 2 && s[3] == 2) return 0; /* null dataspace */
    const size_t need = rank * r->sizeof_size * ((flags & 1) ? 2 : 1);
    if (need > size - at) return -1;
    uint64_t points = 1;
    for (unsigned d = 0; d < rank; d++) {
        uint64_t dim = le(s + at + d * r->sizeof_size, r->sizeof_size);
        if (dim != 0 && points > UINT64_MAX / dim) return -1;
        points *= dim;
    }
    return points > (uint64_t)INT64_MAX ? -1 : (int64_t)points;
}

/* The size of one element as the datatype message states it (0 when damaged). */
static size_t type_element_size(const uint8_t *t, size_t size)
{
    return size < 8 ? 0 : (size_t)le(t + 4, 4);
}

/* Bytes of a name that starts at p, ends with its NUL before end and takes padded bytes (to a
 * multiple of 8 when pad8); 0 when the NUL or the padding is not there. */
static size_t name_bytes(const uint8_t *p, const uint8_t *end, int pad8)
{
    const uint8_t *nul = memchr(p, 0, (size_t)(end - p));
    if (!nul) return 0;
    const size_t n = (size_t)(nul - p) + 1, padded = pad8 ? (n + 7) & ~(size_t)7 : n;
    return padded <= (size_t)(end - p) ? padded : 0;
}

#define CHECK_MAX_TYPE_DEPTH 8 /* datatypes inside datatypes (compound, enum, array, vlen) */

/* The datatype message at [t, end), walked as libhdf5 1.10 decodes it (H5O__dtype_decode_helper,
 * which bounds nothing: member names are copied by their NUL, counts and dimensions trusted):
 * the bytes it takes, or 0 when any part of it, a nested type's included, would lie past end. */
static size_t type_bytes(const uint8_t *t, const uint8_t *end, int depth)
{
    if (depth > CHECK_MAX_TYPE_DEPTH || end - t < 8) return 0;
    const unsigned cls = t[0] & 0x0F, version = t[0] >> 4;
    const unsigned bits = (unsigned)le(t + 1, 3);
    const uint64_t size = le(t + 4, 4);
    if (version < 1 || version > 4) return 0;
    const uint8_t *p = t + 8;
    size_t left = (size_t)(end - p), n;
    switch (cls) {
    case 0: /* fixed-point: bit offset, precision */
    case 4: /* bit field */
        return left >= 4 ? 12 : 0;
    case 1: /* floating point: offset, precision, exponent and mantissa fields, bias */
        return left >= 12 ? 20 : 0;
    case 2: /* time: precision */
        return left >= 2 ? 10 : 0;
    case 3: /* string */
    case 7: /* reference */
        return 8;
    case 5: /* opaque: a tag of (bits & 0xff) bytes */
        return (bits & 0xFF) <= left ? 8 + (bits & 0xFF) : 0;
    case 6: { /* compound: members of name, offset (, version 1: dimensions), type */
        const unsigned members = bits & 0xFFFF;
        size_t offset_bytes = 1;
        for (uint64_t v = size; v > 0xFF; v >>= 8)
            offset_bytes++;
        for (unsigned m = 0; m < members; m++) {
            if (!(n = name_bytes(p, end, version < 3))) return 0;
            p += n;
            const size_t fixed = version == 1 ? 4 + 28 : version == 2 ? 4 : offset_bytes;
            if ((size_t)(end - p) < fixed) return 0;
            p += fixed;
            if (!(n = type_bytes(p, end, depth + 1))) return 0;
            p += n;
        }
        return (size_t)(p - t);
    }
    case 8: { /* enumeration: base type, names, values */
        const unsigned members = bits & 0xFFFF;
        if (!(n = type_bytes(p, end, depth + 1))) return 0;
        const uint64_t base = le(p + 4, 4);
        p += n;
        for (unsigned m = 0; m < members; m++) {
            if (!(n = name_bytes(p, end, version < 3))) return 0;
            p += n;
        }
        if (base > (uint64_t)(end - p) / (members ? members : 1)) return 0;
        return (size_t)(p - t) + (size_t)(base * members);
    }
    case 9: /* variable-length: base type */
        return (n = type_bytes(p, end, depth + 1)) ? 8 + n : 0;
    case 10: { /* array: rank, dimensions (, version 2: permutation), base type */
        if (left < 1 || version < 2) return 0;
        const size_t rank = p[0], head = version == 2 ? 4 + 8 * rank : 1 + 4 * rank;
        if (rank == 0 || rank > 32 || head > left) return 0;
        p += head;
        return (n = type_bytes(p, end, depth + 1)) ? (size_t)(p - t) + n : 0;
    }
    default:
        return 0;
    }
}

typedef struct LayoutCheck {
    int index;
} LayoutCheck;

/* Each attribute message lies within itself: name, datatype and dataspace inside it, the name
 * ends where its size says, and the value (points x element size) fits in what is left.
 * libhdf5 1.10 copies the value by points x element size without the last check, and the name by
 * its NUL without the first. */
static int check_attribute_layout(const Reader *r, unsigned type, const uint8_t *data, size_t size,
                                  void *ctx)
{
    if (type != MSG_ATTRIBUTE) return DS_OK;
    LayoutCheck *lc = ctx;
    const int index = lc->index++;
    AttributeParts a;
    char what[512];
    if (!attribute_parts(data, size, &a)) {
        snprintf(what, sizeof(what),
                 "attribute message %d of the root group is damaged (its "
                 "name, datatype or dataspace does not fit in it)",
                 index);
        return bad(r, what);
    }
    char shown[300];
    ds_quoted(shown, sizeof(shown), a.name, 100);
    if (a.flags & 3) { /* libhdf5 would decode it from another object, unchecked */
        snprintf(what, sizeof(what),
                 "attribute %s of the root group has a shared datatype or dataspace, which dstrain "
                 "does not check (write it without a committed datatype)",
                 shown);
        return bad(r, what);
    }
    if (!type_bytes(a.type, a.type + a.type_size, 0)) {
        snprintf(what, sizeof(what),
                 "attribute %s of the root group is damaged (its datatype does not fit in its "
                 "message)",
                 shown);
        return bad(r, what);
    }
    const int64_t points = space_points(r, a.space, a.space_size);
    const size_t element = type_element_size(a.type, a.type_size);
    /* a variable-length value is stored as its length, a heap address and an index: libhdf5
     * sizes the value's buffer by the stated size when it decodes, by that layout when it reads */
    const int vlen_bad =
        a.type_size >= 8 && (a.type[0] & 0x0F) == 9 && element != 4 + r->sizeof_addr + 4;
    if (points < 0 || (points > 0 && element == 0) || vlen_bad ||
        (element && (uint64_t)points > a.data_size / element)) {
        snprintf(what, sizeof(what),
                 "attribute %s of the root group is damaged (its value does "
                 "not fit in its message)",
                 shown);
        return bad(r, what);
    }
    return DS_OK;
}

typedef struct FindAttribute {
    const char *name;
    uint8_t *msg; /* a copy of the message (the walk frees its chunks) */
    size_t len;
} FindAttribute;

static int find_attribute_visit(const Reader *r, unsigned type, const uint8_t *data, size_t size,
                                void *ctx)
{
    (void)r;
    FindAttribute *f = ctx;
    AttributeParts a;
    if (type != MSG_ATTRIBUTE || !attribute_parts(data, size, &a) || strcmp(a.name, f->name))
        return DS_OK;
    f->msg = malloc(size);
    if (!f->msg) return ds_error(DS_ERR_INTERNAL, "out of memory");
    memcpy(f->msg, data, size);
    f->len = size;
    return 1;
}

/* The heap ID of the one value in attribute message msg: collection address, object index and
 * the value's length in bytes. */
static int attribute_heap_id(const Reader *r, const uint8_t *msg, size_t len, uint64_t *coll,
                             uint32_t *index, uint32_t *length)
{
    AttributeParts a;
    if (!attribute_parts(msg, len, &a)) return bad(r, "its message is damaged");
    if (a.flags & 3)
        return bad(r, "its datatype or dataspace is shared, which dstrain does not check; "
                      "write it as a fixed-length string");
    /* class 9 (variable-length), bit field type 1 (string) */
    if (a.type_size < 8 || (a.type[0] & 0x0F) != 9 || (a.type[1] & 0x0F) != 1)
        return bad(r, "its stored datatype is not a variable-length string");
    /* its base type, one byte a character: libhdf5 sizes its conversion buffer by the value's
     * length times the base type's size */
    if (a.type_size < 16 || le(a.type + 12, 4) != 1)
        return bad(r, "its variable-length string's characters are not one byte each");
    const size_t id_size = 4 + r->sizeof_addr + 4;
    if (id_size > a.data_size) return bad(r, "its value is cut short");
    *length = (uint32_t)le(a.data, 4);
    *coll = le(a.data + 4, r->sizeof_addr);
    *index = (uint32_t)le(a.data + 4 + r->sizeof_addr, 4);
    return DS_OK;
}

/* Walk the collection at coll as libhdf5 will, every step forward and within it; the object
 * index must be there with at least length bytes. */
static int check_collection(const Reader *r, uint64_t coll, uint32_t index, uint32_t length)
{
    const size_t prefix = 8 + r->sizeof_size, obj_head = 8 + r->sizeof_size;
    uint8_t *head = read_at(r, coll, prefix);
    if (!head) return bad(r, "its value's global heap collection is outside the file");
    const int ok = memcmp(head, "GCOL", 4) == 0 && head[4] == 1;
    const uint64_t size = le(head + 8, r->sizeof_size);
    free(head);
    if (!ok) return bad(r, "its value's global heap collection is damaged (no GCOL signature)");
    if (size < 4096 || size > CHECK_MAX_COLLECTION_BYTES)
        return bad(r, "its value's global heap collection has an impossible size");
    uint8_t *heap = read_at(r, coll, size);
    if (!heap) return bad(r, "its value's global heap collection runs past the end of the file");
    int status = DS_OK, seen = 0;
    for (uint64_t p = prefix; p < size && status == DS_OK;) {
        if (p + obj_head > size) break; /* a tail too small for an object: free space */
        const unsigned idx = (unsigned)le(heap + p, 2);
        const uint64_t osize = le(heap + p + 8, r->sizeof_size);
        if (osize > size) {
            status = bad(r, "its value's global heap collection holds an object larger than "
                            "the collection");
            break;
        }
        /* libhdf5: an object takes its header and its size rounded up to 8; the free-space
         * object (index 0) its size alone, so a size of 0 would never move on */
        const uint64_t need = idx > 0 ? obj_head + ((osize + 7) & ~(uint64_t)7) : osize;
        if (need == 0 || need > size - p) {
            status = bad(r, "its value's global heap collection is damaged (an object that "
                            "does not fit, or a free-space object of size 0)");
            break;
        }
        if (idx == index && idx > 0) seen = osize >= length ? 1 : -1;
        p += need;
    }
    free(heap);
    if (status != DS_OK) return status;
    if (seen == 0) return bad(r, "its value is not in the global heap collection it names");
    if (seen < 0) return bad(r, "its value is longer than its global heap object");
    return DS_OK;
}

/* The file's layout from its superblock, read here (libhdf5 is not asked: these checks run
 * before H5Fopen, which itself allocates by the root group's header sizes): the sizes of
 * addresses and lengths, the base address, and the root group's object header address. The
 * superblock sits at 0 or, after a user block, at 512, 1024, 2048, ... */
static int reader_open(const char *path, const char *name, Reader *r, uint64_t *root_addr)
{
    *r = (Reader){.fd = -1, .path = path, .name = name};
    DS_TRY(ds_open_regular(path, &r->fd));
    struct stat st;
    if (fstat(r->fd, &st) != 0) {
        close(r->fd);
        return bad(r, "the file cannot be read");
    }
    r->file_size = (uint64_t)st.st_size;
    static const uint8_t signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    uint8_t sb[128];
    for (uint64_t at = 0; at < r->file_size; at = at ? at * 2 : 512) {
        r->base = 0;
        uint8_t *block =
            read_at(r, at, r->file_size - at < sizeof(sb) ? r->file_size - at : sizeof(sb));
        if (!block) break;
        const size_t got =
            r->file_size - at < sizeof(sb) ? (size_t)(r->file_size - at) : sizeof(sb);
        memset(sb, 0, sizeof(sb));
        memcpy(sb, block, got);
        free(block);
        if (got < 16 || memcmp(sb, signature, 8) != 0) continue;
        const unsigned version = sb[8];
        size_t o = 0, l = 0, p = 0;
        if (version <= 1) {
            o = sb[13], l = sb[14];
            p = 24 + (version == 1 ? 4 : 0); /* base address follows */
        } else if (version <= 3) {
            o = sb[9], l = sb[10];
            p = 12;
        } else {
            close(r->fd);
            r->fd = -1;
            return bad(r, "the superblock has an unknown version");
        }
        if (o < 2 || o > 8 || l < 2 || l > 8) break;
        r->sizeof_addr = o, r->sizeof_size = l;
        const uint64_t base = le(sb + p, o);
        uint64_t root;
        if (version <= 1) /* base, free space, end of file, driver info; the root entry */
            root = le(sb + p + 4 * o + o, o);
        else /* base, superblock extension, end of file, root object header */
            root = le(sb + p + 3 * o, o);
        if (base > r->file_size) break;
        r->base = base;
        *root_addr = root;
        return DS_OK;
    }
    close(r->fd);
    r->fd = -1;
    return NO_SUPERBLOCK; /* libhdf5 looks in the same places and refuses the file itself */
}

int hdf5_check_root_attributes(const char *path)
{
    Reader r;
    uint64_t root = 0;
    int status = reader_open(path, NULL, &r, &root);
    if (status == NO_SUPERBLOCK) return DS_OK;
    if (status != DS_OK) return status;
    LayoutCheck lc = {0};
    status = walk_header(&r, root, check_attribute_layout, &lc);
    close(r.fd);
    return status;
}

int hdf5_check_vlen_string_attribute(const char *path, const char *name)
{
    Reader r;
    uint64_t root = 0;
    int status = reader_open(path, name, &r, &root);
    if (status == NO_SUPERBLOCK) return bad(&r, "no HDF5 superblock dstrain can read");
    if (status != DS_OK) return status;
    FindAttribute f = {.name = name};
    status = walk_header(&r, root, find_attribute_visit, &f);
    if (status == 1) status = DS_OK; /* found */
    if (status == DS_OK && !f.msg)
        status = bad(&r, "a variable-length string stored outside the root group's object "
                         "header (dense attribute storage), which dstrain does not check; write "
                         "it as a fixed-length string");
    uint64_t coll = 0;
    uint32_t index = 0, length = 0;
    if (status == DS_OK) status = attribute_heap_id(&r, f.msg, f.len, &coll, &index, &length);
    free(f.msg);
    /* libhdf5 reads the collection of every value whose address is not 0, empty ones too */
    if (status == DS_OK && coll != 0) status = check_collection(&r, coll, index, length);
    close(r.fd);
    return status;
}

int hdf5_check_number_type(hid_t type, const char *path, const char *what, const char *name)
{
    char shown[600], quoted[300];
    ds_printable(shown, sizeof(shown), path, 500);
    ds_quoted(quoted, sizeof(quoted), name, 100);
    const H5T_class_t cls = H5Tget_class(type);
    if (cls == H5T_FLOAT) {
        const hid_t ieee[4] = {H5T_IEEE_F32LE, H5T_IEEE_F32BE, H5T_IEEE_F64LE, H5T_IEEE_F64BE};
        for (int i = 0; i < 4; i++)
            if (H5Tequal(type, ieee[i]) > 0) return DS_OK;
        return ds_error(DS_ERR_INPUT, "%s: %s %s: not an IEEE float of 4 or 8 bytes", shown, what,
                        quoted);
    }
    const size_t size = H5Tget_size(type), precision = H5Tget_precision(type);
    const int offset = H5Tget_offset(type);
    const H5T_order_t order = H5Tget_order(type);
    if (cls == H5T_INTEGER && (size == 1 || size == 2 || size == 4 || size == 8) &&
        precision == 8 * size && offset == 0 &&
        (order == H5T_ORDER_LE || order == H5T_ORDER_BE || size == 1))
        return DS_OK;
    if (cls != H5T_INTEGER)
        return ds_error(DS_ERR_INPUT, "%s: %s %s: not a number", shown, what, quoted);
    return ds_error(DS_ERR_INPUT,
                    "%s: %s %s: not a standard integer type (%zu bits at bit offset %d in %zu "
                    "bytes; expected 8, 16, 32 or 64 bits filling their bytes)",
                    shown, what, quoted, precision, offset, size);
}

/* A filter pipeline message walked as libhdf5 1.10 decodes it (H5O__pline_decode, which takes
 * each filter's name by its NUL and trusts the counts): 1 when every part lies within size. */
static int pipeline_fits(const uint8_t *m, size_t size)
{
    if (size < 2 || (m[0] != 1 && m[0] != 2) || m[1] > 32) return 0;
    const unsigned version = m[0], filters = m[1];
    const uint8_t *end = m + size, *p = m + (version == 1 ? 8 : 2);
    if (p > end) return 0;
    for (unsigned f = 0; f < filters; f++) {
        if (end - p < 2) return 0;
        const unsigned id = (unsigned)le(p, 2);
        p += 2;
        size_t name = 0; /* version 1: padded to 8 bytes; version 2: only for ids from 256 */
        if (version == 1 || id >= 256) {
            if (end - p < 2) return 0;
            name = (size_t)le(p, 2);
            p += 2;
        }
        if (end - p < 4) return 0;
        const size_t values = (size_t)le(p + 2, 2); /* after the filter's flags */
        p += 4;
        if (name > (size_t)(end - p) || (name && !memchr(p, 0, name))) return 0;
        p += name;
        const size_t value_bytes = 4 * (values + (version == 1 ? values % 2 : 0));
        if (value_bytes > (size_t)(end - p)) return 0;
        p += value_bytes;
    }
    return 1;
}

/* The messages of a dataset's header that H5Dopen decodes: its datatype, dataspace and filter
 * pipeline, each within itself. */
static int check_dataset_message(const Reader *r, unsigned type, const uint8_t *data, size_t size,
                                 void *ctx)
{
    (void)ctx;
    if (type == MSG_DATATYPE && !type_bytes(data, data + size, 0))
        return bad_in(r, "the datatype of", "is damaged (it does not fit in its message)");
    if (type == MSG_DATASPACE && space_points(r, data, size) < 0)
        return bad_in(r, "the dataspace of", "is damaged");
    if (type == MSG_FILTERS && !pipeline_fits(data, size))
        return bad_in(r, "the filter pipeline of", "is damaged (it does not fit in its message)");
    return DS_OK;
}

int hdf5_check_dataset(const char *path, hid_t file, const char *name)
{
    H5L_info_t link;
    herr_t got = -1;
    H5E_BEGIN_TRY
    {
        got = H5Lget_info(file, name, &link, H5P_DEFAULT);
    }
    H5E_END_TRY;
    if (got < 0 || link.type != H5L_TYPE_HARD) return DS_OK; /* the caller's open reports it */
    Reader r;
    uint64_t root = 0;
    int status = reader_open(path, NULL, &r, &root);
    if (status == NO_SUPERBLOCK) return DS_OK;
    if (status != DS_OK) return status;
    char object[300], quoted[280];
    snprintf(object, sizeof(object), "dataset %s", ds_quoted(quoted, sizeof(quoted), name, 200));
    r.object = object;
    status = walk_header(&r, link.u.address, check_dataset_message, NULL);
    close(r.fd);
    return status;
}

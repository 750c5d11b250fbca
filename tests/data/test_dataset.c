/* test_dataset.c: files written by h5py following docs/data.md are read correctly (int32 and
 * int64 tokens, variable- and fixed-length string attributes), and hostile files are refused
 * at open with a message naming the file and the dataset. */
#include "data_test_util.h"

/* Python prelude: make(name, **overrides) writes a file in the documented layout, with any
 * dataset or attribute replaced (None removes it). */
static const char *PRELUDE =
    "import sys, h5py, numpy as np\n"
    "d = sys.argv[1]\n"
    "def make(name, datasets=None, attrs=None):\n"
    "    ds = {'tokens': np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int32),\n"
    "          'doc_offsets': np.array([0, 3, 5, 8], dtype=np.int64)}\n"
    "    at = {'format': 'dstrain-tokens', 'format_version': 1, 'vocab_size': 10,\n"
    "          'bos_id': -1, 'eos_id': 0, 'pad_id': -1, 'tokenizer': 'byte'}\n"
    "    ds.update(datasets or {}); at.update(attrs or {})\n"
    "    with h5py.File(d + '/' + name, 'w') as f:\n"
    "        for k, v in ds.items():\n"
    "            if v is not None: f.create_dataset(k, data=v)\n"
    "        for k, v in at.items():\n"
    "            if v is not None: f.attrs[k] = v\n";

static void make_files(const char *dir, const char *name, const char *body)
{
    const size_t size = strlen(PRELUDE) + strlen(body) + 1;
    char *script = malloc(size);
    snprintf(script, size, "%s%s", PRELUDE, body);
    cr_assert_eq(run_python(dir, name, script), 0, "python script %s failed", name);
    free(script);
}

static void check_layout_reads(const char *path)
{
    TokenDataset *ds = NULL;
    cr_assert_eq(dataset_open(path, 32000, &ds), DS_OK, "%s", ds_last_error());
    const DatasetInfo *info = dataset_info(ds);
    cr_assert_eq(info->n_docs, 3);
    cr_assert_eq(info->n_tokens, 8);
    cr_assert_eq(info->vocab_size, 10);
    cr_assert_eq(info->eos_id, 0);
    cr_assert_eq(info->bos_id, -1);
    cr_assert_str_eq(info->tokenizer, "byte");
    cr_assert_eq(dataset_doc_length(ds, 0), 3);
    cr_assert_eq(dataset_doc_length(ds, 1), 2);
    cr_assert_eq(dataset_doc_length(ds, 2), 3);
    int32_t t[3];
    uint8_t m[3];
    cr_assert_eq(dataset_read_doc(ds, 2, 0, 3, t, m), DS_OK, "%s", ds_last_error());
    cr_assert(t[0] == 9 && t[1] == 2 && t[2] == 6, "got %d %d %d", t[0], t[1], t[2]);
    if (info->has_loss_mask) {
        cr_assert(m[0] == 1 && m[1] == 0 && m[2] == 1, "mask %d %d %d", m[0], m[1], m[2]);
    } else {
        cr_assert(m[0] == 1 && m[1] == 1 && m[2] == 1);
    }
    dataset_close(ds);
}

/* The file (in dir, or an absolute path) is refused at open with an error naming it and
 * holding want. */
static void assert_refused(const char *dir, const char *file, const char *want)
{
    char path[1100];
    if (file[0] == '/')
        snprintf(path, sizeof(path), "%s", file);
    else
        test_path(path, sizeof(path), dir, file);
    TokenDataset *ds = NULL;
    ds_clear_error();
    cr_assert_eq(dataset_open(path, 0, &ds), DS_ERR_INPUT, "%s: %s", path, ds_last_error());
    cr_assert_null(ds);
    cr_assert(strstr(ds_last_error(), path) && strstr(ds_last_error(), want),
              "%s: \"%s\" lacks \"%s\"", path, ds_last_error(), want);
}

Test(dataset, files_written_by_h5py_are_read)
{
    char dir[1024], path[1100];
    test_dir("h5py-layout", dir, sizeof(dir));
    make_files(
        dir, "layout",
        "make('i32.h5')\n"
        "make('i64.h5', {'tokens': np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int64)})\n"
        "make('u16.h5', {'tokens': np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.uint16),\n"
        "                'doc_offsets': np.array([0, 3, 5, 8], dtype=np.int32)})\n"
        "make('fixed.h5', attrs={'format': np.bytes_(b'dstrain-tokens'),\n"
        "                        'tokenizer': np.bytes_(b'byte'),\n"
        "                        'vocab_size': np.int32(10), 'format_version': np.uint8(1)})\n"
        "make('mask.h5', {'loss_mask': np.array([1,1,1,1,1,1,0,1], dtype=np.uint8),\n"
        "                 'labels': np.array([4, 5, 6]), 'task_ids': np.array([1, 1, 2], "
        "dtype=np.int32)})\n"
        "with h5py.File(d + '/chunked.h5', 'w') as f:\n"
        "    f.create_dataset('tokens', data=np.array([3,1,4,1,5,9,2,6], dtype=np.int32),\n"
        "                     chunks=(4,), compression='gzip', shuffle=True, maxshape=(None,))\n"
        "    f.create_dataset('doc_offsets', data=np.array([0, 3, 5, 8]))\n"
        "    f.attrs.update({'format': 'dstrain-tokens', 'format_version': 1, 'vocab_size': 10,\n"
        "                    'eos_id': 0, 'tokenizer': 'byte'})\n");
    const char *files[] = {"i32.h5", "i64.h5", "u16.h5", "fixed.h5", "mask.h5", "chunked.h5"};
    for (size_t i = 0; i < DS_ARRAY_LEN(files); i++) {
        test_path(path, sizeof(path), dir, files[i]);
        check_layout_reads(path);
    }
    /* Per-document metadata of mask.h5. */
    TokenDataset *ds = NULL;
    test_path(path, sizeof(path), dir, "mask.h5");
    cr_assert_eq(dataset_open(path, 0, &ds), DS_OK);
    int64_t labels[3];
    int32_t tasks[3];
    cr_assert_eq(dataset_read_labels(ds, 0, 3, labels), DS_OK);
    cr_assert_eq(dataset_read_task_ids(ds, 1, 2, tasks), DS_OK);
    cr_assert(labels[0] == 4 && labels[1] == 5 && labels[2] == 6);
    cr_assert(tasks[0] == 1 && tasks[1] == 2);
    dataset_close(ds);
    /* Absent metadata is an error when asked for, not garbage. */
    test_path(path, sizeof(path), dir, "i32.h5");
    cr_assert_eq(dataset_open(path, 0, &ds), DS_OK);
    cr_assert_eq(dataset_read_labels(ds, 0, 3, labels), DS_ERR_INPUT);
    assert_error_contains("\"labels\" is missing");
    dataset_close(ds);
}

typedef struct HostileCase {
    const char *file;
    const char *python; /* writes dir/file; NULL when made in C */
    int model_vocab;
    const char *want[3];
} HostileCase;

static const HostileCase HOSTILE[] = {
    {"no_tokens.h5", "make('no_tokens.h5', {'tokens': None})", 0, {"\"tokens\" is missing", NULL}},
    {"no_offsets.h5",
     "make('no_offsets.h5', {'doc_offsets': None})",
     0,
     {"\"doc_offsets\" is missing", NULL}},
    {"float_tokens.h5",
     "make('float_tokens.h5', {'tokens': np.arange(8, dtype=np.float32)})",
     0,
     {"dataset \"tokens\": wrong dtype", "floating point", NULL}},
    {"float_offsets.h5",
     "make('float_offsets.h5', {'doc_offsets': np.array([0., 3., 5., 8.])})",
     0,
     {"dataset \"doc_offsets\": wrong dtype", NULL}},
    {"bool_mask.h5",
     "make('bool_mask.h5', {'loss_mask': np.ones(8, dtype=bool)})",
     0,
     {"dataset \"loss_mask\": wrong dtype", NULL}},
    {"rank2.h5",
     "make('rank2.h5', {'tokens': np.ones((2, 4), dtype=np.int32)})",
     0,
     {"dataset \"tokens\": expected 1 dimension, got 2", NULL}},
    {"big_id.h5",
     "make('big_id.h5', {'tokens': np.array([3, 1, 4, 10, 5, 9, 2, 6])})",
     0,
     {"dataset \"tokens\": token id 10 at index 3", "[0, 10)", NULL}},
    {"negative_id.h5",
     "make('negative_id.h5', {'tokens': np.array([3, 1, 4, 1, 5, 9, -2, 6])})",
     0,
     {"dataset \"tokens\": token id -2 at index 6", NULL}},
    {"huge_id.h5",
     "make('huge_id.h5', {'tokens': np.array([3, 1, 4, 1, 5, 2**40, 2, 6], dtype=np.int64)})",
     0,
     {"dataset \"tokens\"", "at index 5", NULL}},
    {"not_increasing.h5",
     "make('not_increasing.h5', {'doc_offsets': np.array([0, 3, 3, 8])})",
     0,
     {"dataset \"doc_offsets\": not increasing at index 2 (3 then 3", NULL}},
    {"decreasing.h5",
     "make('decreasing.h5', {'tokens': np.arange(10), 'doc_offsets': np.array([0, 2, 5, 10, 7, "
     "10])})",
     0,
     {"dataset \"doc_offsets\": not increasing at index 4 (10 then 7)", NULL}},
    {"offset_start.h5",
     "make('offset_start.h5', {'doc_offsets': np.array([1, 3, 5, 8])})",
     0,
     {"dataset \"doc_offsets\": must start at 0", NULL}},
    {"offset_end.h5",
     "make('offset_end.h5', {'doc_offsets': np.array([0, 3, 5, 7])})",
     0,
     {"dataset \"doc_offsets\": last offset 7", "\"tokens\" (8)", NULL}},
    {"empty.h5",
     "make('empty.h5', {'tokens': np.zeros(0, dtype=np.int32), 'doc_offsets': np.array([0])})",
     0,
     {"dataset \"tokens\" is empty", NULL}},
    {"no_docs.h5",
     "make('no_docs.h5', {'doc_offsets': np.zeros(0, dtype=np.int64)})",
     0,
     {"dataset \"doc_offsets\": the file holds no documents", NULL}},
    {"mask_length.h5",
     "make('mask_length.h5', {'loss_mask': np.ones(7, dtype=np.uint8)})",
     0,
     {"dataset \"loss_mask\": length 7", "\"tokens\" (8)", NULL}},
    {"labels_length.h5",
     "make('labels_length.h5', {'labels': np.array([1, 2])})",
     0,
     {"dataset \"labels\": length 2", NULL}},
    {"big_vocab.h5",
     "make('big_vocab.h5', attrs={'vocab_size': 50000})",
     32000,
     {"big_vocab.h5: vocab_size 50000 is larger than the model's 32000", NULL}},
    {"no_format.h5",
     "make('no_format.h5', attrs={'format': None})",
     0,
     {"attribute \"format\" is missing", NULL}},
    {"other_format.h5",
     "make('other_format.h5', attrs={'format': 'megatron'})",
     0,
     {"attribute \"format\": expected \"dstrain-tokens\", got \"megatron\"", NULL}},
    {"version2.h5",
     "make('version2.h5', attrs={'format_version': 2})",
     0,
     {"attribute \"format_version\": version 2 is not supported", NULL}},
    {"no_vocab.h5",
     "make('no_vocab.h5', attrs={'vocab_size': None})",
     0,
     {"attribute \"vocab_size\" is missing", NULL}},
    {"string_vocab.h5",
     "make('string_vocab.h5', attrs={'vocab_size': '10'})",
     0,
     {"attribute \"vocab_size\": expected an integer", NULL}},
    {"eos_outside.h5",
     "make('eos_outside.h5', attrs={'eos_id': 10})",
     0,
     {"attribute \"eos_id\": 10 is outside the vocabulary", NULL}},
    {"group_tokens.h5",
     "make('group_tokens.h5', {'tokens': None})\n"
     "with h5py.File(d + '/group_tokens.h5', 'a') as f: f.create_group('tokens')",
     0,
     {"\"tokens\" is not a dataset", NULL}},
    {"truncated.h5",
     "make('full.h5', {'tokens': np.arange(200000) % 10, 'doc_offsets': np.array([0, 100000, "
     "200000])})\n"
     "b = open(d + '/full.h5', 'rb').read()\n"
     "open(d + '/truncated.h5', 'wb').write(b[:len(b) // 2])",
     0,
     {"truncated.h5", NULL}},
    {"garbage.h5",
     "open(d + '/garbage.h5', 'wb').write(bytes(range(256)) * 64)",
     0,
     {"garbage.h5: not an HDF5 file, or truncated or corrupted", NULL}},
    {"zero_bytes.h5",
     "open(d + '/zero_bytes.h5', 'wb').close()",
     0,
     {"zero_bytes.h5: not an HDF5 file", NULL}},
    {"missing.h5", NULL, 0, {"missing.h5: cannot open: No such file or directory", NULL}},
    /* sizes declared in the header but never stored: refused before anything is allocated */
    {"unwritten_offsets.h5",
     "make('unwritten_offsets.h5', {'tokens': np.arange(2**20, dtype=np.int32) % 10,\n"
     "     'doc_offsets': None})\n"
     "with h5py.File(d + '/unwritten_offsets.h5', 'a') as f:\n"
     "    f.create_dataset('doc_offsets', shape=(2**31,), dtype='i8')",
     0,
     {"dataset \"doc_offsets\": declares 2147483648 elements but stores none", NULL}},
    {"unwritten_tokens.h5",
     "make('unwritten_tokens.h5', {'tokens': None, 'doc_offsets': np.array([0, 2**40])})\n"
     "with h5py.File(d + '/unwritten_tokens.h5', 'a') as f:\n"
     "    f.create_dataset('tokens', shape=(2**40,), dtype='i4', chunks=(2**16,))",
     0,
     {"dataset \"tokens\": declares 1099511627776 elements but stores none", NULL}},
    {"half_written.h5",
     "make('half_written.h5', {'tokens': None})\n"
     "with h5py.File(d + '/half_written.h5', 'a') as f:\n"
     "    t = f.create_dataset('tokens', shape=(8,), dtype='i4', chunks=(4,))\n"
     "    t[:4] = [3, 1, 4, 1]",
     0,
     {"dataset \"tokens\": declares 8 elements but stores only some of them", NULL}},
    {"more_docs_than_tokens.h5",
     "make('more_docs_than_tokens.h5', {'doc_offsets': np.arange(100)})",
     0,
     {"dataset \"doc_offsets\": 99 documents in 8 tokens", NULL}},
    {"external.h5",
     "open(d + '/outside.bin', 'wb').write(np.arange(8, dtype='<i4').tobytes())\n"
     "make('external.h5', {'tokens': None})\n"
     "with h5py.File(d + '/external.h5', 'a') as f:\n"
     "    f.create_dataset('tokens', shape=(8,), dtype='<i4', external=[(d + '/outside.bin', 0, 32)])",
     0,
     {"dataset \"tokens\": stored in other files (external storage)", NULL}},
    {"control_format.h5",
     "make('control_format.h5', attrs={'format': 'x\\n\\x1b[31mred'})",
     0,
     {"attribute \"format\": expected \"dstrain-tokens\", got \"x\\n\\x1B[31mred\"", NULL}},
};

Test(dataset, hostile_files_are_refused_with_file_and_dataset_named)
{
    char dir[1024], path[1100];
    test_dir("hostile", dir, sizeof(dir));
    char body[16384] = "";
    for (size_t i = 0; i < DS_ARRAY_LEN(HOSTILE); i++) {
        if (!HOSTILE[i].python) continue;
        strncat(body, HOSTILE[i].python, sizeof(body) - strlen(body) - 2);
        strcat(body, "\n");
    }
    make_files(dir, "hostile", body);
    for (size_t i = 0; i < DS_ARRAY_LEN(HOSTILE); i++) {
        const HostileCase *c = &HOSTILE[i];
        test_path(path, sizeof(path), dir, c->file);
        TokenDataset *ds = NULL;
        ds_clear_error();
        int rc = dataset_open(path, c->model_vocab, &ds);
        cr_assert_eq(rc, DS_ERR_INPUT, "%s: status %d (%s)", c->file, rc, ds_last_error());
        cr_assert_null(ds, "%s", c->file);
        cr_assert(strstr(ds_last_error(), path) != NULL, "%s: \"%s\" does not name the file",
                  c->file, ds_last_error());
        for (int k = 0; k < 3 && c->want[k]; k++)
            cr_assert(strstr(ds_last_error(), c->want[k]) != NULL, "%s: \"%s\" lacks \"%s\"",
                      c->file, ds_last_error(), c->want[k]);
        /* The LM reader refuses it the same way. */
        LMReader *r = NULL;
        cr_assert_eq(lm_reader_open(path, c->model_vocab, 1, 0, 0, 1, &r), DS_ERR_INPUT, "%s",
                     c->file);
        cr_assert_null(r);
    }
}

/* libhdf5 1.10 trusts the bytes of a file's root group header and attributes: it loops forever
 * loading a global heap collection whose free-space object has size 0 (where a variable-length
 * string attribute's value lives), reads past an attribute message whose value claims more than
 * it holds, and allocates what a header chunk or a string's character size claims. dstrain reads
 * those bytes itself first (data/hdf5_check.c). Good files of every header layout h5py writes
 * are read; the fuzzer's reproducers and each kind of damage are refused, in bounded time and
 * memory, naming the file, the attribute and what is wrong. */
static const char *GCOL_EDIT =
    "import struct\n"
    "def gcol_edit(src, dst, how):\n"
    "    b = bytearray(open(d + '/' + src, 'rb').read())\n"
    "    g = b.find(b'GCOL')\n"
    "    size = struct.unpack('<Q', b[g + 8:g + 16])[0]\n"
    "    p = g + 16\n"
    "    while p + 16 <= g + size:\n"
    "        idx, osz = struct.unpack('<H', b[p:p + 2])[0], struct.unpack('<Q', b[p + 8:p + 16])[0]\n"
    "        if idx == 0: break\n"
    "        p += 16 + (osz + 7) // 8 * 8\n"
    "    if how == 'free0': b[p + 8:p + 16] = struct.pack('<Q', 0)\n"
    "    if how == 'signature': b[g:g + 4] = b'GCOX'\n"
    "    if how == 'huge': b[g + 8:g + 16] = struct.pack('<Q', 1 << 40)\n"
    "    if how == 'object': b[g + 16 + 8:g + 16 + 16] = struct.pack('<Q', 1 << 20)\n"
    "    if how == 'index':\n"
    "        q = g + 16\n"
    "        while q < p:\n"
    "            osz = struct.unpack('<Q', b[q + 8:q + 16])[0]\n"
    "            b[q:q + 2] = struct.pack('<H', 999)\n"
    "            q += 16 + (osz + 7) // 8 * 8\n"
    "    open(d + '/' + dst, 'wb').write(b)\n";

Test(dataset, vlen_string_attributes_are_checked_before_libhdf5_reads_them, .timeout = 120)
{
    char dir[1024], path[1100];
    test_dir("vlen", dir, sizeof(dir));
    char body[16384];
    // clang-format off
    snprintf(body, sizeof(body),
             "%s"
             "make('v1.h5')\n"
             "h5py.File(d + '/x', 'w').close()\n"
             "def make_with(name, extra=0, fixed=False, **kw):\n"
             "    with h5py.File(d + '/' + name, 'w', **kw) as f:\n"
             "        f.create_dataset('tokens', data=np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int32))\n"
             "        f.create_dataset('doc_offsets', data=np.array([0, 3, 5, 8], dtype=np.int64))\n"
             "        s = np.bytes_ if fixed else str\n"
             "        at = {'format': s('dstrain-tokens'), 'format_version': 1, 'vocab_size': 10,\n"
             "              'bos_id': -1, 'eos_id': 0, 'pad_id': -1, 'tokenizer': s('byte')}\n"
             "        for k, v in at.items(): f.attrs[k] = v\n"
             "        for i in range(extra): f.attrs['extra%%d' %% i] = 'x' * i\n"
             "make_with('v2.h5', libver='latest')\n"
             "make_with('ordered.h5', track_order=True)\n"
             "make_with('userblock.h5', userblock_size=512)\n"
             "make_with('many_v1.h5', extra=40)\n"
             "make_with('dense.h5', extra=20, libver='latest')\n"
             "make_with('dense_fixed.h5', extra=20, fixed=True, libver='latest')\n"
             "for how in ['free0', 'signature', 'huge', 'object', 'index']:\n"
             "    gcol_edit('v1.h5', how + '.h5', how)\n"
             /* the value of vocab_size (a scalar int64, 8 bytes) made to claim 4 points; the
              * first attribute's name size made larger than its message */
             "b = bytearray(open(d + '/v1.h5', 'rb').read())\n"
             "i = b.find(b'vocab_size\\0')\n"
             "m = b.rfind(bytes([1, 0, 11, 0]), 0, i)\n"
             "sp = m + 8 + 16 + 8 * ((b[m + 4] | b[m + 5] << 8) + 7 >> 3)\n"
             "b[sp + 1] = 1\n"
             "b[sp + 8:sp + 16] = struct.pack('<Q', 4)\n"
             "open(d + '/overread.h5', 'wb').write(b)\n"
             "b = bytearray(open(d + '/v1.h5', 'rb').read())\n"
             "i = b.find(b'format\\0')\n"
             "b[i - 6:i - 4] = struct.pack('<H', 4000)\n"
             "open(d + '/badname.h5', 'wb').write(b)\n"
             /* legal HDF5 integers that use 32 of their 64 bits: libhdf5 converts by the
              * stated precision and offset, and reads past its buffers on damaged ones */
             "def narrow(name, dataset):\n"
             "    make_with(name)\n"
             "    t = h5py.h5t.STD_I64LE.copy()\n"
             "    t.set_precision(32)\n"
             "    with h5py.File(d + '/' + name, 'r+') as f:\n"
             "        if dataset:\n"
             "            del f['doc_offsets']\n"
             "            s = h5py.h5s.create_simple((4,))\n"
             "            h5py.h5d.create(f.id, b'doc_offsets', t, s).write(\n"
             "                h5py.h5s.ALL, h5py.h5s.ALL, np.array([0, 3, 5, 8], dtype=np.int64))\n"
             "        else:\n"
             "            del f.attrs['vocab_size']\n"
             "            a = h5py.h5a.create(f.id, b'vocab_size', t, h5py.h5s.create(h5py.h5s.SCALAR))\n"
             "            a.write(np.array(10, dtype=np.int64))\n"
             "make_with('empty_tokenizer.h5')\n"
             "with h5py.File(d + '/empty_tokenizer.h5', 'r+') as f: f.attrs['tokenizer'] = ''\n"
             "narrow('narrow_attr.h5', False)\n"
             "narrow('narrow_dataset.h5', True)\n"
             /* attributes of every datatype class the root walk decodes, in the oldest format
              * (datatype versions 1 and 2) and in 1.10's (version 3: names unpadded) */
             "extras = {\n"
             "    'flag': lambda f: f.attrs.create('flag', True),\n"
             "    'ratio': lambda f: f.attrs.create('ratio', np.float32(0.5)),\n"
             "    'rec': lambda f: f.attrs.create('rec', np.array((1, 2.0, b'ab'), dtype=[('a', '<i4'), ('b', '<f8'), ('c', 'S2')])),\n"
             "    'nested': lambda f: f.attrs.create('nested', np.zeros(1, dtype=[('x', [('p', '<i2'), ('q', '<f4')]), ('y', '<u8', (2,))])),\n"
             "    'enum': lambda f: f.attrs.create('enum', 1, dtype=h5py.enum_dtype({'RED': 0, 'GREEN': 1, 'BLUE': 42}, basetype='i1')),\n"
             "    'opaque': lambda f: f.attrs.create('opaque', np.void(b'\\x01\\x02\\x03')),\n"
             "    'ref': lambda f: f.attrs.create('ref', f['tokens'].ref),\n"
             "    'array': lambda f: h5py.h5a.create(f.id, b'array', h5py.h5t.array_create(h5py.h5t.STD_I32LE, (2, 3)), h5py.h5s.create(h5py.h5s.SCALAR)).write(np.zeros((2, 3), np.int32), mtype=h5py.h5t.array_create(h5py.h5t.STD_I32LE, (2, 3))),\n"
             "}\n"
             "for lib in ['earliest', 'v110']:\n"
             "    for k, add in extras.items():\n"
             "        make_with('type_%%s_%%s.h5' %% (k, lib), libver=lib)\n"
             "        with h5py.File(d + '/type_%%s_%%s.h5' %% (k, lib), 'r+') as f: add(f)\n"
             "make_with('shared_type.h5')\n"
             "with h5py.File(d + '/shared_type.h5', 'r+') as f:\n"
             "    f['mytype'] = np.dtype('<i8')\n"
             "    f.attrs.create('committed', 1, dtype=f['mytype'])\n",
             GCOL_EDIT);
    // clang-format on
    make_files(dir, "vlen", body);
    const char *good[] = {"v1.h5", "v2.h5", "ordered.h5", "userblock.h5", "many_v1.h5",
                          "dense_fixed.h5"};
    for (size_t i = 0; i < DS_ARRAY_LEN(good); i++) {
        test_path(path, sizeof(path), dir, good[i]);
        check_layout_reads(path);
    }
    const char *extras[] = {"flag", "ratio", "rec", "nested", "enum", "opaque", "ref", "array"};
    for (size_t i = 0; i < DS_ARRAY_LEN(extras); i++)
        for (int v110 = 0; v110 < 2; v110++) {
            char name[64];
            snprintf(name, sizeof(name), "type_%s_%s.h5", extras[i], v110 ? "v110" : "earliest");
            test_path(path, sizeof(path), dir, name);
            check_layout_reads(path);
        }
    /* an empty string: its collection is checked (libhdf5 reads it) and the file opens */
    test_path(path, sizeof(path), dir, "empty_tokenizer.h5");
    TokenDataset *empty = NULL;
    cr_assert_eq(dataset_open(path, 0, &empty), DS_OK, "%s: %s", path, ds_last_error());
    cr_assert_str_eq(dataset_info(empty)->tokenizer, "");
    dataset_close(empty);
    const struct {
        const char *file, *want;
    } refused[] = {
        {"free0.h5", "attribute \"format\": its value's global heap collection is damaged (an "
                     "object that does not fit, or a free-space object of size 0); refused before "
                     "libhdf5 reads it (damage there can make libhdf5 hang, read out of bounds or "
                     "exhaust memory)"},
        {"signature.h5", "attribute \"format\": its value's global heap collection is damaged "
                         "(no GCOL signature)"},
        {"huge.h5", "attribute \"format\": its value's global heap collection has an impossible "
                    "size"},
        {"object.h5", "holds an object larger than the collection"},
        {"index.h5", "attribute \"format\": its value is not in the global heap collection it "
                     "names"},
        {"dense.h5", "attribute \"format\": a variable-length string stored outside the root "
                     "group's object header (dense attribute storage), which dstrain does not "
                     "check; write it as a fixed-length string"},
        {DSTRAIN_SOURCE_DIR "/tests/fuzz/regressions/hdf5_vlen_attribute_hang.h5",
         "attribute \"format\": its value's global heap collection is damaged"},
        /* an attribute whose value runs past its message: libhdf5 1.10 would read beyond it */
        {DSTRAIN_SOURCE_DIR "/tests/fuzz/regressions/hdf5_attribute_value_overread.h5",
         "attribute \"format\" of the root group is damaged (its value does not fit in its "
         "message); refused before libhdf5 reads it"},
        {"overread.h5", "attribute \"vocab_size\" of the root group is damaged (its value does "
                        "not fit in its message)"},
        {"badname.h5", "attribute message 0 of the root group is damaged (its name, datatype or "
                       "dataspace does not fit in it)"},
        /* a variable-length string whose characters claim 1.6 GB each: libhdf5 1.10 would
         * allocate length x that for its conversion (23 GB here) */
        {DSTRAIN_SOURCE_DIR "/tests/fuzz/regressions/hdf5_vlen_base_size_oom.h5",
         "attribute \"format\": its variable-length string's characters are not one byte each"},
        /* a variable-length string whose stored element size is not the 16 bytes of its
         * reference: libhdf5 decodes the value by one size and copies it by the other */
        {DSTRAIN_SOURCE_DIR "/tests/fuzz/regressions/hdf5_vlen_size_overread.h5",
         "attribute \"format\" of the root group is damaged (its value does not fit in its "
         "message)"},
        /* an empty variable-length string (length 0) whose collection ends in a free-space
         * object of size 0: libhdf5 1.10 loads the collection for an empty value too */
        {DSTRAIN_SOURCE_DIR "/tests/fuzz/regressions/hdf5_vlen_empty_string_hang.h5",
         "attribute \"format\": its value's global heap collection is damaged (an object that "
         "does not fit, or a free-space object of size 0)"},
        /* an enumeration of 257 members whose names run past the message: libhdf5 1.10
         * copies each name by its NUL (H5Aexists decodes every attribute's datatype) */
        {DSTRAIN_SOURCE_DIR "/tests/fuzz/regressions/hdf5_enum_names_overread.h5",
         "attribute \"tokenizer\" of the root group is damaged (its datatype does not fit in its "
         "message)"},
        {"shared_type.h5", "attribute \"committed\" of the root group has a shared datatype or "
                           "dataspace, which dstrain does not check"},
        /* an integer attribute of precision 255 at bit offset 65535 in 8 bytes: libhdf5 1.10
         * converts it by reading far past the value */
        {DSTRAIN_SOURCE_DIR "/tests/fuzz/regressions/hdf5_integer_bit_offset.h5",
         "attribute \"format_version\": not a standard integer type (255 bits at bit offset "
         "65535 in 8 bytes; expected 8, 16, 32 or 64 bits filling their bytes)"},
        {"narrow_attr.h5", "attribute \"vocab_size\": not a standard integer type (32 bits at "
                           "bit offset 0 in 8 bytes"},
        {"narrow_dataset.h5", "dataset \"doc_offsets\": not a standard integer type (32 bits "
                              "at bit offset 0 in 8 bytes"},
        /* a root group header chunk claiming 16 GiB: H5Fopen itself would allocate it */
        {DSTRAIN_SOURCE_DIR "/tests/fuzz/regressions/hdf5_root_header_oom.h5",
         "an object header chunk of the root group is implausibly large; refused before libhdf5 "
         "reads it"},
    };
    for (size_t i = 0; i < DS_ARRAY_LEN(refused); i++)
        assert_refused(dir, refused[i].file, refused[i].want);
}

/* The datasets' object headers are walked before libhdf5 decodes them: datatype, dataspace
 * and filter pipeline within their messages, none shared. Layouts h5py writes (contiguous,
 * chunked, compressed with checksums, in the oldest format and in 1.10's) open; damaged ones are
 * refused naming the dataset. */
Test(dataset, dataset_headers_are_checked_before_libhdf5_decodes_them, .timeout = 120)
{
    char dir[1024], path[1100];
    test_dir("dataset-headers", dir, sizeof(dir));
    // clang-format off
    make_files(dir, "headers",
               "def layout(name, lib, **kw):\n"
               "    with h5py.File(d + '/' + name, 'w', libver=lib) as f:\n"
               "        f.create_dataset('tokens', data=np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int32), **kw)\n"
               "        f.create_dataset('doc_offsets', data=np.array([0, 3, 5, 8], dtype=np.int64), **kw)\n"
               "        f.attrs.update({'format': np.bytes_(b'dstrain-tokens'), 'format_version': 1,\n"
               "                        'vocab_size': 10, 'eos_id': 0, 'tokenizer': np.bytes_(b'byte')})\n"
               "for lib in ['earliest', 'v110']:\n"
               "    layout('plain_%s.h5' % lib, lib)\n"
               "    layout('chunked_%s.h5' % lib, lib, chunks=(2,), maxshape=(None,))\n"
               "    layout('gzip_%s.h5' % lib, lib, chunks=(2,), compression='gzip', shuffle=True, fletcher32=True)\n"
               /* the tokens' int32 datatype made an enumeration of 257 members whose names are not
                * in the message; the deflate filter's name without its NUL */
               "b = bytearray(open(d + '/plain_earliest.h5', 'rb').read())\n"
               "t = bytes([0x10, 0x08, 0, 0, 4, 0, 0, 0, 0, 0, 32, 0])\n"
               "assert b.count(t) == 1\n"
               "i = b.find(t)\n"
               "b[i:i + 4] = bytes([0x18, 1, 1, 0])\n"
               "open(d + '/enum_type.h5', 'wb').write(b)\n"
               "b = bytearray(open(d + '/gzip_earliest.h5', 'rb').read())\n"
               "i = b.find(b'deflate\\0')\n"
               "assert i > 0\n"
               "b[i + 7:i + 8] = b'x'\n"
               "open(d + '/filter_name.h5', 'wb').write(b)\n"
               "with h5py.File(d + '/committed.h5', 'w') as f:\n"
               "    f['itype'] = np.dtype('<i4')\n"
               "    f.create_dataset('tokens', data=np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.int32), dtype=f['itype'])\n"
               "    f.create_dataset('doc_offsets', data=np.array([0, 3, 5, 8], dtype=np.int64))\n"
               "    f.attrs.update({'format': np.bytes_(b'dstrain-tokens'), 'format_version': 1, 'vocab_size': 10})\n");
    // clang-format on
    const char *good[] = {"plain_earliest.h5", "chunked_earliest.h5", "gzip_earliest.h5",
                          "plain_v110.h5",     "chunked_v110.h5",     "gzip_v110.h5"};
    for (size_t i = 0; i < DS_ARRAY_LEN(good); i++) {
        test_path(path, sizeof(path), dir, good[i]);
        check_layout_reads(path);
    }
    const struct {
        const char *file, *want;
    } refused[] = {
        {"enum_type.h5", "the datatype of dataset \"tokens\" is damaged (it does not fit in its "
                         "message); refused before libhdf5 reads it"},
        {"filter_name.h5", "the filter pipeline of dataset \"tokens\" is damaged"},
        {"committed.h5", "a datatype, dataspace, filter or attribute message of dataset "
                         "\"tokens\" is shared (stored in another object, as a committed datatype "
                         "is), which dstrain does not check"},
    };
    for (size_t i = 0; i < DS_ARRAY_LEN(refused); i++)
        assert_refused(dir, refused[i].file, refused[i].want);
}

/* A small file is scanned whole at open, so a bad id stops the run before the first step. */
Test(dataset, bad_token_id_in_a_small_file_fails_at_open)
{
    char dir[1024], path[1100];
    test_dir("scan-check", dir, sizeof(dir));
    make_files(dir, "bad", "make('bad.h5', {'tokens': np.array([3, 1, 4, 1, 5, 9, 2, 60])})\n");
    test_path(path, sizeof(path), dir, "bad.h5");
    TokenDataset *ds = NULL;
    cr_assert_eq(dataset_open(path, 0, &ds), DS_ERR_INPUT);
    assert_error_contains(
        "dataset \"tokens\": token id 60 at index 7 is outside the vocabulary [0, 10)");
}

/* A file of 2^26 tokens is past the up-front scan; a bad id is then caught by the read that
 * meets it. Every chunk is written (a chunk never written is refused at open), with zeros that
 * gzip makes a few KB each. */
Test(dataset, bad_token_id_in_a_large_file_fails_at_read)
{
    char dir[1024], path[1100];
    test_dir("read-check", dir, sizeof(dir));
    make_files(dir, "large",
               "n = 1 << 26\n"
               "with h5py.File(d + '/large.h5', 'w') as f:\n"
               "    t = f.create_dataset('tokens', shape=(n,), dtype=np.int32, chunks=(1 << 20,),\n"
               "                         compression='gzip')\n"
               "    z = np.zeros(1 << 20, dtype=np.int32)\n"
               "    for i in range(0, n, 1 << 20): t[i:i + (1 << 20)] = z\n"
               "    t[n - 5] = 700\n"
               "    f.create_dataset('doc_offsets', data=np.array([0, n - 10, n]))\n"
               "    f.attrs.update({'format': 'dstrain-tokens', 'format_version': 1,\n"
               "                    'vocab_size': 512, 'eos_id': 1})\n");
    test_path(path, sizeof(path), dir, "large.h5");
    TokenDataset *ds = NULL;
    cr_assert_eq(dataset_open(path, 0, &ds), DS_OK, "%s", ds_last_error());
    int32_t t[10];
    cr_assert_eq(dataset_read_doc(ds, 0, 1000, 10, t, NULL), DS_OK, "%s", ds_last_error());
    cr_assert_eq(t[0], 0);
    cr_assert_eq(dataset_read_doc(ds, 1, 0, 10, t, NULL), DS_ERR_INPUT);
    assert_error_contains(path);
    assert_error_contains("dataset \"tokens\": token id 700 at index 67108859");
    dataset_close(ds);

    /* The window reader stops on the window that holds it (the last of 64). */
    const int T = (1 << 20) - 1;
    LMReader *r = NULL;
    cr_assert_eq(lm_reader_open(path, 0, T, 3, 0, 1, &r), DS_OK, "%s", ds_last_error());
    cr_assert_eq(lm_reader_windows_per_epoch(r), 64);
    int32_t *in = malloc((size_t)T * sizeof(int32_t)), *tg = malloc((size_t)T * sizeof(int32_t));
    float *wt = malloc((size_t)T * sizeof(float));
    int failures = 0, rc = DS_OK;
    for (int k = 0; k < 64; k++) {
        rc = lm_reader_next(r, 1, in, tg, wt);
        if (rc != DS_OK) {
            failures++;
            cr_assert_eq(rc, DS_ERR_INPUT);
            assert_error_contains("token id 700 at index 67108859");
        }
    }
    cr_assert_eq(failures, 1, "exactly one window holds the bad id");
    free(in);
    free(tg);
    free(wt);
    lm_reader_close(r);
}

/* The shipped dataset (data/bundled, made by tools/make_bundled_data.sh) opens, holds what its
 * README says, and feeds the window reader. */
Test(dataset, bundled_kjv_files_are_valid)
{
    const char *names[2] = {"kjv-train.h5", "kjv-eval.h5"};
    const int64_t docs[2] = {146, 7}, tokens[2] = {653691, 30246};
    for (int i = 0; i < 2; i++) {
        char path[1100];
        snprintf(path, sizeof(path), "%s/data/bundled/%s", DSTRAIN_SOURCE_DIR, names[i]);
        TokenDataset *ds = NULL;
        cr_assert_eq(dataset_open(path, 320, &ds), DS_OK, "%s", ds_last_error());
        const DatasetInfo *info = dataset_info(ds);
        cr_assert_eq(info->n_docs, docs[i], "%s", names[i]);
        cr_assert_eq(info->n_tokens, tokens[i], "%s", names[i]);
        cr_assert_eq(info->vocab_size, 320);
        cr_assert_eq(info->bos_id, 256);
        cr_assert_eq(info->eos_id, 257);
        cr_assert_eq(info->pad_id, -1);
        cr_assert_str_eq(info->tokenizer, "byte");
        int32_t head[12];
        cr_assert_eq(dataset_read_doc(ds, 0, 0, 12, head, NULL), DS_OK);
        char text[12] = {0};
        for (int k = 1; k < 12; k++)
            text[k - 1] = (char)head[k];
        cr_assert_eq(head[0], 256, "documents start with BOS");
        cr_assert(strncmp(text, i == 0 ? "Genesis 1\n\n" : "Genesis 20\n", 11) == 0, "got \"%s\"",
                  text);
        dataset_close(ds);
    }
    char path[1100];
    snprintf(path, sizeof(path), "%s/data/bundled/kjv-train.h5", DSTRAIN_SOURCE_DIR);
    LMReader *r = NULL;
    cr_assert_eq(lm_reader_open(path, 320, 256, 1, 0, 1, &r), DS_OK, "%s", ds_last_error());
    cr_assert_eq(lm_reader_windows_per_epoch(r), (653691 + 146) / 257);
    int32_t in[4 * 256], tg[4 * 256];
    float wt[4 * 256];
    cr_assert_eq(lm_reader_next(r, 4, in, tg, wt), DS_OK, "%s", ds_last_error());
    for (int k = 0; k < 4 * 256; k++)
        cr_assert(in[k] >= 0 && in[k] < 258 && wt[k] == 1.0f);
    lm_reader_close(r);
}

/* a FIFO would block H5Fopen's open() until a writer comes */
Test(dataset, a_fifo_is_refused_without_blocking, .timeout = 20)
{
    char dir[1024], path[1100];
    test_dir("fifo", dir, sizeof(dir));
    test_path(path, sizeof(path), dir, "data.h5");
    cr_assert_eq(mkfifo(path, 0600), 0);
    TokenDataset *ds = NULL;
    cr_assert_eq(dataset_open(path, 0, &ds), DS_ERR_INPUT);
    cr_assert_null(ds);
    assert_error_contains("data.h5: not a regular file (a FIFO)");
}

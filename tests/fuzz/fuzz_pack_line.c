/* fuzz_pack_line.c: one JSONL line of `dstrain pack` input (pack_line_parse: strict JSON, no
 * tree), then the whole pack of that line into an HDF5 file when it parses. */
#include "data/pack.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    PackLine line;
    char problem[200];
    if (!pack_line_parse((const char *)data, size, &line, problem, sizeof(problem))) return 0;
    if (size > 4096) return 0; /* the scanner is the target; HDF5 writing is slow */
    char in[600], out[600];
    fuzz_write("line.jsonl", data, size, in, sizeof(in));
    snprintf(out, sizeof(out), "%s/line.h5", fuzz_dir());
    char *argv[] = {(char *)"pack", (char *)"--input", in, (char *)"--output", out, NULL};
    FILE *saved = stdout;
    stdout = fopen("/dev/null", "w");
    pack_main(5, argv);
    fclose(stdout);
    stdout = saved;
    return 0;
}

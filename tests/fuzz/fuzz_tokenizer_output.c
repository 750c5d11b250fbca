/* fuzz_tokenizer_output.c: what the tokenizer helper prints, as `dstrain generate` reads it
 * (generate_parse_ids). The first two bytes choose the vocabulary size, the rest is the output.
 * Ids that pass are inside the vocabulary and within the cap; a refusal is one printable line
 * (the helper's text is escaped in it). */
#include "fuzz_util.h"
#include "trainer/inspect.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    const int vocab = 1 + (data[0] | data[1] << 8);
    char *text = fuzz_string(data + 2, size - 2);
    int32_t ids[64];
    int n = -1;
    if (generate_parse_ids(text, vocab, ids, 64, &n, "tokenizer output") == DS_OK) {
        if (n < 0 || n > 64) abort();
        for (int i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= vocab) abort();
    } else if (ds_has_control_chars(ds_last_error())) {
        fprintf(stderr, "fuzz_tokenizer_output: a control character in the message\n");
        abort();
    }
    free(text);
    return 0;
}

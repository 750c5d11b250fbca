/* inspect.h: the commands that look at what a run made, without training: `dstrain info`
 * (info.c), `dstrain plot` (plot.c) and `dstrain generate` (generate.c). */
#ifndef DSTRAIN_INSPECT_H
#define DSTRAIN_INSPECT_H

#include <stdint.h>
#include <stdio.h>

/* dstrain info PATH: a checkpoint directory, a Hugging Face model directory, a dataset (.h5)
 * or a safetensors file, summarized on out. */
int info_main(int argc, char **argv);
int info_print(const char *path, FILE *out);

/* dstrain plot DIR [-o FILE.png]: a run directory's loss, eval loss, lr and throughput over
 * steps, or a nightly state directory's history matrix (held-out losses by version). */
int plot_main(int argc, char **argv);

/* dstrain generate --model DIR --prompt TEXT [--max-new-tokens N] [--temperature T --top-p P
 * --seed S]: greedy (temperature 0, the default) or top-p sampling. */
int generate_main(int argc, char **argv);
/* Token ids as the tokenizer helper prints them (and --prompt-ids takes them): separated by
 * spaces, tabs, newlines or commas, each in [0, vocab), at most cap into ids[0..*n). DS_ERR_INPUT
 * names what and shows the offending text escaped. */
int generate_parse_ids(const char *text, int vocab, int32_t *ids, int cap, int *n,
                       const char *what);

#endif

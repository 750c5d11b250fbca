/* pack.h: `dstrain pack`, JSONL of token ids to the HDF5 layout of docs/data.md. */
#ifndef DSTRAIN_PACK_H
#define DSTRAIN_PACK_H

/* argv[0] is "pack". Returns DS_OK, or a status with the message set through ds_error (bad
 * input: DS_ERR_INPUT, naming FILE:LINE and the field). Prints a summary to stdout on success. */
int pack_main(int argc, char **argv);

#endif

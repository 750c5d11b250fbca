/* hdf5_check.h: checks of an HDF5 file's own structures that libhdf5 does not make before it
 * trusts them, made by reading the bytes ourselves with our own bounds. libhdf5 1.10 loops
 * forever loading a global heap collection whose free-space object has size 0 (where the value
 * of a variable-length string attribute lives), and over-reads an attribute message whose value
 * is longer than the message: so before dstrain lets libhdf5 near the root group's attributes,
 * it walks that object header, and before it reads a variable-length string, the collection the
 * value lives in; before it reads a number, that its stored type is a standard one. Not here:
 * what the attributes mean (dataset.c). */
#ifndef DSTRAIN_HDF5_CHECK_H
#define DSTRAIN_HDF5_CHECK_H

#include <hdf5.h>

/* DS_OK when the variable-length string attribute name of the root group of the HDF5 file at
 * path can be read without risk: its characters are one byte each, its message was found in the
 * root group's object header (version 1 or 2, continuation chunks followed), it holds one value,
 * and the global heap collection that value lives in is whole and well formed (every object within
 * it, each step forward, the value's object present and as long as the value). DS_ERR_INPUT
 * otherwise, naming the file, the attribute and what is wrong; an attribute stored where this does
 * not look (dense attribute storage, a shared datatype) is refused too, with the way out: a
 * fixed-length string. */
int hdf5_check_vlen_string_attribute(const char *path, const char *name);

/* DS_OK when the file's superblock leads to a root group object header whose every chunk lies
 * within the file (H5Fopen allocates what the header claims), and every attribute message in it
 * lies within itself: its name, datatype and dataspace inside the message, the name as long as
 * its size says, its datatype (every part libhdf5 decodes: member names, nested types) inside
 * its own size, neither shared, and its value (points x element size) in what is left. libhdf5 1.10
 * decodes an attribute on H5Aexists and H5Aopen and copies its value without the last check (a heap
 * over-read the fuzzer found). Called before H5Fopen by every reader of HDF5 files from users
 * (dataset_open, the replay buffer, the EWC state). DS_ERR_INPUT names the file and the
 * attribute (or its position when its name is damaged). */
int hdf5_check_root_attributes(const char *path);

/* DS_OK when the dataset name of the open HDF5 file (path, file) can be opened by libhdf5
 * without risk: its object header lies within the file, chunk by chunk, and the messages H5Dopen
 * decodes (datatype, dataspace, filter pipeline) each within itself, none of them shared
 * (libhdf5 1.10 copies a filter's or a member's name by its NUL and trusts counts). A name that is
 * not a hard link is left to the caller's open. DS_ERR_INPUT names the file and the dataset. */
int hdf5_check_dataset(const char *path, hid_t file, const char *name);

/* DS_OK when type, the stored type of an attribute or dataset that is about to be read as a
 * number, is one every writer makes: an integer of 1, 2, 4 or 8 bytes using all their bits, or
 * an IEEE float of 4 or 8 bytes, either byte order. libhdf5 1.10 converts by the precision, bit
 * offset and fields a type message states, and reads past its buffers on ones beyond the type's
 * size (a finding of the fuzzer). DS_ERR_INPUT names path, what ("attribute", "dataset"), name and
 * the type's layout otherwise. */
int hdf5_check_number_type(hid_t type, const char *path, const char *what, const char *name);

#endif

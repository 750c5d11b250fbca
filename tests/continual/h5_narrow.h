/* h5_narrow.h: a test helper that rewrites an attribute or a dataset of an HDF5 file's root group
 * with the same values in a legal but unusual integer type (64-bit storage using 32 bits of it),
 * as a damaged or foreign file might hold: the readers must refuse it before libhdf5 converts. */
#ifndef DSTRAIN_TESTS_H5_NARROW_H
#define DSTRAIN_TESTS_H5_NARROW_H

#include <hdf5.h>
#include <stdlib.h>

/* 0 when name (an attribute when dataset is 0) was rewritten. */
static inline int h5_narrow(const char *path, const char *name, int dataset)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return -1;
    hid_t obj = dataset ? H5Dopen2(f, name, H5P_DEFAULT) : H5Aopen(f, name, H5P_DEFAULT);
    hid_t space = dataset ? H5Dget_space(obj) : H5Aget_space(obj);
    const hssize_t n = H5Sget_simple_extent_npoints(space);
    double *values = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    herr_t rc = dataset ? H5Dread(obj, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values)
                        : H5Aread(obj, H5T_NATIVE_DOUBLE, values);
    dataset ? H5Dclose(obj) : H5Aclose(obj);
    hid_t narrow = H5Tcopy(H5T_STD_I64LE);
    H5Tset_precision(narrow, 32);
    if (rc >= 0) rc = dataset ? H5Ldelete(f, name, H5P_DEFAULT) : H5Adelete(f, name);
    if (rc >= 0) {
        obj = dataset ? H5Dcreate2(f, name, narrow, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)
                      : H5Acreate2(f, name, narrow, space, H5P_DEFAULT, H5P_DEFAULT);
        rc = obj < 0 ? -1
             : dataset
                 ? H5Dwrite(obj, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values)
                 : H5Awrite(obj, H5T_NATIVE_DOUBLE, values);
        if (obj >= 0) dataset ? H5Dclose(obj) : H5Aclose(obj);
    }
    H5Tclose(narrow);
    H5Sclose(space);
    free(values);
    H5Fclose(f);
    return rc < 0 ? -1 : 0;
}

#endif

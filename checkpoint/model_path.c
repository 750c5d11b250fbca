/* model_path.c: one resolver for every command that reads a model (model_path.h). A path is
 * classified by what it holds, never by its name: manifest.json marks a checkpoint, config.json
 * a Hugging Face directory, step-* directories a checkpoint directory, and checkpoints/ or
 * export/ a run directory. Nothing is guessed past that: anything else is refused, naming the
 * four kinds accepted. */
#include "model_path.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "ckpt.h"
#include "hf_model.h"

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int has_file(const char *dir, const char *name)
{
    char path[MODEL_PATH_MAX + 64];
    struct stat st;
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path)) return 0;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

ModelPathKind model_path_kind(const char *dir)
{
    return has_file(dir, "manifest.json") ? MODEL_PATH_CHECKPOINT : MODEL_PATH_HF;
}

/* How many entries of dir are named step-* (complete or not). */
static int count_step_dirs(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n += strncmp(de->d_name, "step-", 5) == 0;
    closedir(d);
    return n;
}

/* The newest verified checkpoint under dir into out; 1 when there is one, 0 when dir holds no
 * step-* entry at all, an error when it holds some but none is complete and sound. */
static int newest_checkpoint(const char *cmd, const char *dir, char *out, size_t cap, int *found)
{
    *found = 0;
    if (!count_step_dirs(dir)) return DS_OK;
    DS_TRY(ckpt_find_latest(dir, out, cap));
    if (!out[0])
        return ds_error(DS_ERR_INPUT,
                        "%s: %s: no complete checkpoint there (its step-* directories have no "
                        "manifest.json or do not verify)",
                        cmd, dir);
    *found = 1;
    return DS_OK;
}

static int set_out(const char *from, char *out, size_t cap, const char *value)
{
    if ((size_t)snprintf(out, cap, "%s", value) >= cap)
        return ds_error(DS_ERR_INPUT, "%.200s...: path too long", from);
    return DS_OK;
}

int model_path_resolve(const char *cmd, const char *path, char *out, size_t cap,
                       ModelPathKind *kind)
{
    out[0] = 0;
    struct stat st;
    if (stat(path, &st) != 0)
        return ds_error(DS_ERR_INPUT, "%s: %s: %s", cmd, path, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return ds_error(DS_ERR_INPUT,
                        "%s: %s: not a directory (expected a Hugging Face model directory, a "
                        "checkpoint, a checkpoint directory or a run directory)",
                        cmd, path);
    if (strlen(path) >= MODEL_PATH_MAX - 64)
        return ds_error(DS_ERR_INPUT, "%.200s...: path too long", path);
    if (has_file(path, "manifest.json")) {
        *kind = MODEL_PATH_CHECKPOINT;
        return set_out(path, out, cap, path);
    }
    if (hf_dir_kind(path)) {
        *kind = MODEL_PATH_HF;
        return set_out(path, out, cap, path);
    }
    char found_path[MODEL_PATH_MAX + 64], sub[MODEL_PATH_MAX];
    int found = 0;
    DS_TRY(newest_checkpoint(cmd, path, found_path, sizeof(found_path), &found));
    const char *what = "the newest complete checkpoint of";
    if (!found) { /* a run directory */
        snprintf(sub, sizeof(sub), "%s/checkpoints", path);
        if (is_dir(sub))
            DS_TRY(newest_checkpoint(cmd, sub, found_path, sizeof(found_path), &found));
        snprintf(sub, sizeof(sub), "%s/export", path);
        if (!found && is_dir(sub) && hf_dir_kind(sub)) {
            snprintf(found_path, sizeof(found_path), "%s", sub);
            found = 2;
            what = "the export of";
        }
    }
    if (!found)
        return ds_error(DS_ERR_INPUT,
                        "%s: %s: no model there: expected a Hugging Face model directory "
                        "(config.json), a checkpoint (step-N with manifest.json), a checkpoint "
                        "directory (step-N directories) or a run directory (checkpoints/ or "
                        "export/)",
                        cmd, path);
    *kind = found == 2 ? MODEL_PATH_HF : MODEL_PATH_CHECKPOINT;
    DS_TRY(set_out(path, out, cap, found_path));
    fprintf(stderr, "dstrain: %s: reading %s (%s %s)\n", cmd, out, what, path);
    return DS_OK;
}

int model_path_load_weights(const char *dir, const ModelConfig *mc, const ParamTable *table,
                            float *params)
{
    if (model_path_kind(dir) == MODEL_PATH_HF) return hf_load_weights(dir, mc, table, params);
    Ckpt *c = NULL;
    DS_TRY(ckpt_open(dir, &c));
    int status = ckpt_read_buffer(c, "params", table, params, 0, 0);
    ckpt_close(c);
    return status;
}

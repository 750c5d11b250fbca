/* fuzz_tasks_file.c: the tasks file of continual.tasks (continual_tasks_load: the depth check,
 * libyaml, every task's keys and values), from a file. A refusal must be one printable line: the
 * keys and values it quotes come from the file and are escaped. */
#include "fuzz_util.h"
#include "trainer/continual.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[600];
    fuzz_write("tasks.yaml", data, size, path, sizeof(path));
    static ContinualTasks tasks;
    if (continual_tasks_load(path, &tasks) != DS_OK) {
        if (ds_has_control_chars(ds_last_error())) {
            fprintf(stderr, "fuzz_tasks_file: a control character in the message\n");
            abort();
        }
        return 0;
    }
    if (tasks.count < 1 || tasks.count > CONTINUAL_MAX_TASKS) abort();
    for (int i = 0; i < tasks.count; i++) {
        const ContinualTask *t = &tasks.items[i];
        if ((t->steps > 0) == (t->epochs > 0) || t->train.count < 1 ||
            ds_has_control_chars(t->id) || ds_has_control_chars(t->eval))
            abort();
    }
    return 0;
}

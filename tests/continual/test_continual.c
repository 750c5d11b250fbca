/* test_continual.c: the tasks file (good and hostile), the summary numbers of a known matrix,
 * and the config.json fields of a sequence-classification export. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trainer/common.h"
#include "trainer/continual.h"
#include <cjson/cJSON.h>

#include "checkpoint/export.h"

static const char *write_tasks(const char *text)
{
    static char path[1024];
    mkdir(DSTRAIN_TEST_TMP, 0755); /* the build creates no scratch directory */
    snprintf(path, sizeof(path), "%s/continual-tasks-%ld.yaml", DSTRAIN_TEST_TMP, (long)getpid());
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

Test(continual, tasks_file_is_read_in_order)
{
    ContinualTasks *t = malloc(sizeof(*t));
    const char *path =
        write_tasks("tasks:\n"
                    "  - id: a\n    train: a.h5\n    eval: a-test.h5\n    steps: 10\n"
                    "  - {id: b, train: b.h5, eval: b-test.h5, epochs: 1.5}\n"
                    "  - {id: c, train: [c.h5, {path: general.h5, weight: 0.25}], eval: c-t.h5,"
                    " steps: 2}\n");
    cr_assert_eq(continual_tasks_load(path, t), DS_OK, "%s", ds_last_error());
    cr_assert_eq(t->count, 3);
    cr_assert_eq(t->items[2].line, 7);
    cr_assert_str_eq(t->items[0].id, "a");
    cr_assert_str_eq(t->items[0].eval, "a-test.h5");
    cr_assert_eq(t->items[0].steps, 10);
    cr_assert_str_eq(t->items[1].train.items[0].path, "b.h5");
    cr_assert_eq(t->items[1].train.count, 1);
    cr_assert_eq(t->items[2].train.count, 2);
    cr_assert_str_eq(t->items[2].train.items[0].path, "c.h5");
    cr_assert_float_eq(t->items[2].train.items[0].weight, 1.0, 1e-9);
    cr_assert_str_eq(t->items[2].train.items[1].path, "general.h5");
    cr_assert_float_eq(t->items[2].train.items[1].weight, 0.25, 1e-9);
    cr_assert_float_eq(t->items[1].epochs, 1.5, 1e-12);
    cr_assert_eq(t->items[1].steps, 0);
    free(t);
}

static void expect_error(const char *text, const char *want)
{
    ContinualTasks *t = malloc(sizeof(*t));
    const char *path = write_tasks(text);
    cr_assert_eq(continual_tasks_load(path, t), DS_ERR_INPUT, "accepted: %s", text);
    char full[1400];
    snprintf(full, sizeof(full), "%s:%s", path, want);
    cr_assert(strstr(ds_last_error(), full) != NULL, "got \"%s\", want \"%s\"", ds_last_error(),
              full);
    free(t);
}

Test(continual, hostile_tasks_files_name_the_file_line_and_key)
{
    expect_error("tasks:\n  - id: a\n    train: a.h5\n    eval: e.h5\n    steps: 5x\n",
                 "5: tasks[0].steps: expected a positive integer, got \"5x\"");
    expect_error("tasks:\n  - id: a\n    train: a.h5\n    eval: e.h5\n    steps: -3\n",
                 "5: tasks[0].steps: expected a positive integer");
    expect_error("tasks:\n  - id: a\n    train: a.h5\n    eval: e.h5\n    epochs: nan\n",
                 "5: tasks[0].epochs: expected a positive number");
    expect_error("tasks:\n  - id: a\n    train: a.h5\n    eval: e.h5\n",
                 "2: tasks[0]: give exactly "
                 "one of steps and epochs");
    expect_error(
        "tasks:\n  - id: a\n    train: a.h5\n    eval: e.h5\n    steps: 1\n    epochs: 2\n",
        "2: tasks[0]: give exactly one of steps and epochs");
    expect_error("tasks:\n  - id: a\n    train: a.h5\n    steps: 1\n",
                 "2: tasks[0]: eval: missing");
    expect_error("tasks:\n  - id: a\n    train: a.h5\n    eval: e.h5\n    step: 1\n",
                 "5: tasks[0].step: unknown key");
    expect_error("tasks:\n  - {id: a, train: a, eval: e, steps: 1}\n  - {id: a, train: b, eval: e, "
                 "steps: 1}\n",
                 "3: tasks[1].id: \"a\" is also tasks[0]'s");
    expect_error("tasks: []\n", "1: tasks: expected a non-empty list");
    expect_error("tasks: 3\n", "1: tasks: expected a non-empty list");
    expect_error("task:\n  - {id: a}\n", "1: task: unknown key (expected tasks)");
    expect_error("- a\n- b\n", "1: expected a mapping with the key tasks");
    expect_error("tasks:\n  - just-a-name\n", "2: tasks[0]: expected a mapping");
    expect_error("tasks:\n  - {id: a, train: [{path: x, weight: -1}], eval: e, steps: 1}\n",
                 "2: tasks[0].train[0].weight: expected a number in (0, 1e6], got \"-1\"");
    expect_error("tasks:\n  - {id: a, train: [], eval: e, steps: 1}\n",
                 "2: tasks[0].train: an empty list");
    expect_error("tasks:\n  - {id: a, train: [{path: x, size: 2}], eval: e, steps: 1}\n",
                 "2: tasks[0].train[0]: unknown key");
    expect_error("tasks:\n  - {id: a, train: {path: x}, eval: e, steps: 1}\n",
                 "2: tasks[0].train: expected a value");
    expect_error("tasks:\n  - {id: a, train: \"x\n", "3: invalid YAML");
    /* keys and values from the file are escaped in messages; ids and paths with a control
     * character are refused (they reach progress lines, file names and scripts) */
    expect_error("tasks:\n  - id: a\n    train: a.h5\n    eval: e.h5\n    steps: '5\"x'\n",
                 "5: tasks[0].steps: expected a positive integer, got \"5\\\"x\"");
    expect_error("tasks:\n  - id: a\n    train: a.h5\n    eval: e.h5\n    steps: \"1\\e[2J\\n\"\n",
                 "5: tasks[0].steps: holds a control character: \"1\\x1B[2J\\n\"");
    expect_error("\"ta\\nsks\\e[31m\": []\n", "1: ta\\nsks\\x1B[31m: unknown key (expected tasks)");
    expect_error("tasks:\n  - {id: \"a\\nb\", train: a.h5, eval: e.h5, steps: 1}\n",
                 "2: tasks[0].id: holds a control character: \"a\\nb\"");
    expect_error("tasks:\n  - {id: a, train: [\"x\\ty.h5\"], eval: e.h5, steps: 1}\n",
                 "2: tasks[0].train[0]: holds a control character: \"x\\ty.h5\"");
    expect_error("tasks:\n  - {id: a, train: a.h5, eval: \"e\\u0007.h5\", steps: 1}\n",
                 "2: tasks[0].eval: holds a control character: \"e\\x07.h5\"");
    expect_error("tasks:\n  - {id: a, train: a.h5, eval: e.h5, \"st\\u001bps\": 1}\n",
                 "2: tasks[0].st\\x1Bps: unknown key");
    ContinualTasks *t = malloc(sizeof(*t));
    cr_assert_eq(continual_tasks_load("/nonexistent/tasks.yaml", t), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "continual.tasks: /nonexistent/tasks.yaml") != NULL);
    free(t);
}

Test(continual, summary_of_a_known_matrix)
{
    /* 3 tasks; rows: after task i */
    const double R[9] = {0.9, 0, 0, 0.7, 0.8, 0, 0.6, 0.75, 0.95};
    ContinualSummary s;
    continual_summarize(R, 3, 1, &s);
    cr_assert_float_eq(s.average, (0.6 + 0.75 + 0.95) / 3, 1e-12);
    cr_assert_float_eq(s.backward_transfer, ((0.6 - 0.9) + (0.75 - 0.8)) / 2, 1e-12);
    cr_assert_float_eq(s.forgetting, ((0.9 - 0.6) + (0.8 - 0.75)) / 2, 1e-12);
    /* forgetting is measured from the best earlier value, not the first */
    const double R2[9] = {0.5, 0, 0, 0.8, 0.9, 0, 0.6, 0.9, 0.9};
    continual_summarize(R2, 3, 1, &s);
    cr_assert_float_eq(s.forgetting, ((0.8 - 0.6) + 0.0) / 2, 1e-12);
    /* losses: lower is better, forgetting is the rise */
    const double L[4] = {1.0, 0, 1.5, 0.8};
    continual_summarize(L, 2, 0, &s);
    cr_assert_float_eq(s.forgetting, 0.5, 1e-12);
    cr_assert_float_eq(s.backward_transfer, 0.5, 1e-12);
    continual_summarize(L, 1, 1, &s);
    cr_assert_float_eq(s.average, 1.0, 1e-12);
    cr_assert_float_eq(s.forgetting, 0.0, 0);
}

Test(continual, classification_export_fields)
{
    ModelConfig mc;
    memset(&mc, 0, sizeof(mc));
    mc.arch = ARCH_QWEN2;
    mc.num_labels = 3;
    mc.pad_token_id = 151643;
    cJSON *cfg = cJSON_Parse("{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 8}");
    const char *names[] = {"ok", "bearing_fault", "overheat"};
    cr_assert_eq(hf_classification_fields(cfg, &mc, names), DS_OK);
    char *text = cJSON_PrintUnformatted(cfg);
    cr_assert(strstr(text, "\"architectures\":[\"Qwen2ForSequenceClassification\"]") != NULL, "%s",
              text);
    cr_assert(strstr(text, "\"num_labels\":3") != NULL, "%s", text);
    cr_assert(
        strstr(text, "\"id2label\":{\"0\":\"ok\",\"1\":\"bearing_fault\",\"2\":\"overheat\"}") !=
            NULL,
        "%s", text);
    cr_assert(strstr(text, "\"label2id\":{\"ok\":0,\"bearing_fault\":1,\"overheat\":2}") != NULL,
              "%s", text);
    cr_assert(strstr(text, "\"pad_token_id\":151643") != NULL, "%s", text);
    cr_assert(strstr(text, "\"hidden_size\":8") != NULL, "%s", text);
    free(text);
    mc.arch = ARCH_LLAMA;
    mc.pad_token_id = -1;
    cr_assert_eq(hf_classification_fields(cfg, &mc, NULL), DS_OK);
    text = cJSON_PrintUnformatted(cfg);
    cr_assert(strstr(text, "LlamaForSequenceClassification") != NULL, "%s", text);
    cr_assert(strstr(text, "\"2\":\"LABEL_2\"") != NULL, "%s", text);
    cr_assert(strstr(text, "\"pad_token_id\":null") != NULL, "%s", text);
    free(text);
    mc.num_labels = 0;
    cr_assert_eq(hf_classification_fields(cfg, &mc, NULL), DS_ERR_INTERNAL);
    cJSON_Delete(cfg);
}

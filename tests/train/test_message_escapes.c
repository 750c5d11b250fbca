/* test_message_escapes.c: the base layer's escaping of strings from input before they reach a
 * one-line message: ds_printable (control characters, DEL, bytes that are not UTF-8, the
 * backslash) and ds_quoted (the same between quotes, with a quote inside escaped), cut after the
 * given number of input bytes on a character boundary. */
#include <criterion/criterion.h>
#include <string.h>

#include "trainer/common.h"

Test(messages, printable_escapes_controls_and_keeps_utf8)
{
    char buf[128];
    cr_assert_str_eq(ds_printable(buf, sizeof(buf), "a\nb\tc\x1b[2J\x7f\\d", 100),
                     "a\\nb\\tc\\x1B[2J\\x7F\\\\d");
    cr_assert_str_eq(ds_printable(buf, sizeof(buf), "caf\xc3\xa9 \xff", 100), "caf\xc3\xa9 \\xFF");
    cr_assert_str_eq(ds_printable(buf, sizeof(buf), "say \"x\"", 100), "say \"x\"");
    cr_assert_str_eq(ds_printable(buf, sizeof(buf), "abcdef", 3), "abc...");
}

Test(messages, quoted_escapes_the_quote_too)
{
    char buf[128];
    cr_assert_str_eq(ds_quoted(buf, sizeof(buf), "w\"q\\\n\x1b]0;t\x07", 100),
                     "\"w\\\"q\\\\\\n\\x1B]0;t\\x07\"");
    cr_assert_str_eq(ds_quoted(buf, sizeof(buf), "", 100), "\"\"");
    cr_assert_str_eq(ds_quoted(buf, sizeof(buf), "abcdef", 2), "\"ab...\"");
    /* a small buffer still ends in the closing quote */
    char small[12];
    ds_quoted(small, sizeof(small), "abcdefghijklmnop", 100);
    cr_assert(small[0] == '"' && small[strlen(small) - 1] == '"' && strlen(small) < sizeof(small),
              "%s", small);
}

#!/bin/sh
# The `shout` action pack in POSIX shell (sh, sed, tr; no jq, no python): an
# example that docs/action-packs.md is all a pack needs, in any language.
# Read a line, answer it, loop.
#
# Limit: JSON is read with sed, which works here only because of what the
# messages can hold:
#   - `text` may hold no backslash and no double quote. JSON writes a quote,
#     a backslash, a newline or any control character with a backslash, so a
#     text without backslashes needs no unescaping and cannot end early. The
#     manifest's `pattern` says so, but the runtime does not enforce
#     `pattern`: such a text is answered here with the error
#     `unsupported_text`.
#   - A string value can then never contain `"type":` or `"id":`, and the
#     arguments' schema (additionalProperties: false) lets no argument be
#     named `type` or `id`: the only such keys in a message are its own.
# Only ASCII letters are uppercased (tr works on bytes); other UTF-8 text is
# passed through unchanged.

# field NAME LINE: prints `=VALUE` if LINE has "NAME":"VALUE" with a VALUE
# free of backslashes and quotes, and nothing otherwise (the `=` tells an
# empty value from a missing one).
field() {
    printf '%s\n' "$2" | sed -n 's/.*"'"$1"'"[[:space:]]*:[[:space:]]*"\([^"\\]*\)".*/=\1/p'
}

answer_error() { # ID CODE MESSAGE (none of them may hold `"` or `\`)
    printf '{"type":"error","id":"%s","code":"%s","message":"%s"}\n' "$1" "$2" "$3"
}

printf '%s\n' '{"type":"ready","protocol":1}'

while IFS= read -r line || [ -n "$line" ]; do
    type=$(field type "$line")
    case $type in
    =run)
        id=$(field id "$line")
        if [ -z "$id" ]; then
            printf 'shout: ignored a run without a plain `id`: %.200s\n' "$line" >&2
            continue
        fi
        id=${id#=}
        action=$(field action "$line")
        case ${action#=} in
        upper)
            text=$(field text "$line")
            if [ -z "$text" ]; then
                answer_error "$id" unsupported_text 'shout handles only texts without backslashes, double quotes or control characters'
            else
                upper=$(printf '%s' "${text#=}" | tr 'abcdefghijklmnopqrstuvwxyz' 'ABCDEFGHIJKLMNOPQRSTUVWXYZ')
                printf '{"type":"result","id":"%s","output":{"text":"%s"}}\n' "$id" "$upper"
            fi
            ;;
        fail)
            answer_error "$id" shouted_failure 'SHOUT FAILED, AS ASKED'
            ;;
        *)
            answer_error "$id" unknown_action 'shout has the actions upper and fail'
            ;;
        esac
        ;;
    =cancel)
        # Every request is answered before the next line is read, so a
        # cancel always names a request already answered: nothing to stop.
        ;;
    =shutdown)
        exit 0
        ;;
    *)
        printf 'shout: ignored a line: %.200s\n' "$line" >&2
        ;;
    esac
done
exit 0

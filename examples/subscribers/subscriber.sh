#!/bin/sh
# A Vigil results subscriber in POSIX sh + redis-cli (>= 5). Prints "seq<TAB>label<TAB>score" per result entry of
# docs/results-schema.md, read with its own consumer group and acked after printing; see README.md here.
set -u

usage() {
    cat <<'EOF'
usage: subscriber.sh --source SRC [--url redis://[user:pass@]host:port/db] [--namespace NS]
                     [--group NAME] [--consumer NAME] [--until-eos]
Prints "seq<TAB>label<TAB>score" per result; --until-eos exits 0 once the source ended and every result was
printed (by this consumer or, sharing --group, by the others).
EOF
}

die() {
    echo "subscriber.sh: $*" >&2
    exit 2
}

redact() {
    printf '%s\n' "$1" | sed 's#//[^/@]*@#//***@#'
}

url=${REDIS_URL:-redis://127.0.0.1:6379/0} ns=vigil source= group=subscriber consumer=$(hostname) until_eos=0
while [ $# -gt 0 ]; do
    case $1 in
        --until-eos) until_eos=1; shift; continue ;;
        -h|--help) usage; exit 0 ;;
        --url|--namespace|--source|--group|--consumer) [ $# -ge 2 ] || die "$1 needs a value" ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    case $1 in
        --url) url=$2 ;; --namespace) ns=$2 ;; --source) source=$2 ;; --group) group=$2 ;; --consumer) consumer=$2 ;;
    esac
    shift 2
done
[ -n "$source" ] || die "--source is required (the source name given to \`vigil produce\`)"
shown=$(redact "$url")
rest=${url#redis://}
case $url in redis://?*) ;; *) die "invalid URL $shown: use redis://[user:password@]host:port/db" ;; esac
case $rest in */*) db=${rest#*/} ;; *) db= ;; esac
case $db in *[!0-9]*) die "invalid URL $shown: the db after the port must be a number, not '$db'" ;; esac

rcli() {
    redis-cli -u "$url" --no-auth-warning -e "$@"
}

# redis-cli runs the command even when AUTH failed (it only prints a warning), so check the login first.
out=$(rcli PING 2>&1)
[ "$out" = PONG ] || die "cannot use $shown: $out"
key="$ns:{$source}:results"
if ! out=$(rcli XGROUP CREATE "$key" "$group" 0 MKSTREAM 2>&1); then
    case $out in *BUSYGROUP*) ;; *) die "XGROUP CREATE $key $group: $out" ;; esac
fi

# Frames of the source that will get no (more) result entry: written, dead-lettered, stale, or trimmed unread.
# The workers' publish script appends a result and counts it in one atomic step, so once these reach the frame
# count every result is on the stream.
accounted() {
    rcli HMGET "$ns:{$source}:meta" processed dead dropped_stale dropped_trimmed | awk '{ n += $0 } END { print n + 0 }'
}

# The frame count once the producer ended the source (its meta hash holds eos and total), else nothing. Read there
# when this consumer did not see the end-of-stream entry: another consumer of a shared group, or an earlier run
# with the same group, read and acked it.
ended() {
    rcli HMGET "$ns:{$source}:meta" eos total | awk 'NR == 1 { eos = $0 } NR == 2 { total = $0 }
        END { if (eos == "1" && total ~ /^[0-9]+$/) print total }'
}

# COUNT 1: redis-cli prints a reply flat, one string per line (key, entry id, field, value, ...), so one entry
# per call keeps field/value pairs unambiguous. No value of a result entry contains a newline.
id=0        # first our own pending entries (a previous run that died before XACK), then new ones: ">"
frames=     # the frame count, once the eos entry was read
block=2000  # 0 once every result is on the stream: read what is left without blocking, then stop
tab=$(printf '\t')
while :; do
    if [ "$block" = 0 ]; then
        out=$(rcli XREADGROUP GROUP "$group" "$consumer" COUNT 1 STREAMS "$key" "$id" 2>&1)
    else
        out=$(rcli XREADGROUP GROUP "$group" "$consumer" COUNT 1 BLOCK "$block" STREAMS "$key" "$id" 2>&1)
    fi || die "XREADGROUP on $key: $out"
    if [ "$(printf '%s\n' "$out" | wc -l)" -gt 1 ]; then  # else nil (timeout) or only the key: nothing new
        parsed=$(printf '%s\n' "$out" | awk '
            NR == 2 { id = $0 }
            NR > 2 && NR % 2 == 1 { k = $0 }
            NR > 2 && NR % 2 == 0 { f[k] = $0 }
            END { print id; print f["v"]; print f["type"]; print f["seq"] "\t" f["label"] "\t" f["score"] }')
        { read -r entry; read -r v; read -r type; IFS= read -r line; } <<EOF
$parsed
EOF
        if [ "$v" != 1 ]; then
            echo "skipped entry $entry: schema version '$v', this reader knows 1" >&2
        elif [ "$type" = result ]; then
            printf '%s\n' "$line"
        else
            frames=${line%%"$tab"*}
            echo "end of stream: source $source, $frames frames" >&2
        fi
        out=$(rcli XACK "$key" "$group" "$entry" 2>&1) || die "XACK $key $entry: $out"  # after printing
    elif [ "$id" = 0 ]; then
        id='>'
    elif [ "$block" = 0 ]; then
        exit 0
    elif [ "$until_eos" = 1 ] && [ -z "$frames" ]; then  # nothing new for $block ms
        frames=$(ended)
    fi
    # The eos entry comes from the worker that handled the producer's last message; other workers may still be
    # writing results of earlier frames, so it is not the last entry of the stream.
    if [ "$until_eos" = 1 ] && [ -n "$frames" ] && [ "$block" != 0 ] && [ "$(accounted)" -ge "$frames" ]; then
        block=0
    fi
done

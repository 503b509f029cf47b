# Sourced by test.sh: makes sure every tool the tests start is there,
# installing the missing ones with apt-get when running as root on Debian or
# Ubuntu (as scripts/need-browser.sh does for Chromium), and otherwise
# naming the exact command. Each entry is "command:Debian package:why"; a
# command that starts with / is a file that must exist.
test_tools=(
    "cc:build-essential:crates that compile C"
    "openssl:openssl:the AUTORO signing recipe and the TLS tests' certificates"
    "base64:coreutils:the AUTORO signing recipe"
    "faketime:faketime:tasuki doctor's clock-skew test"
    "python3:python3:steps in the confinement tests"
    "mount:mount:the full-disk fault test's small tmpfs"
    "systemd-analyze:systemd:systemd-analyze verify of the rendered units"
    "/usr/share/zoneinfo/Europe/Berlin:tzdata:schedules in a time zone (the hub reads the system's zones)"
)
have() {
    case "$1" in
        /*) [ -e "$1" ] ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}
missing_tools=()
missing_packages=()
for entry in "${test_tools[@]}"; do
    IFS=: read -r tool package why <<<"$entry"
    if ! have "$tool"; then
        missing_tools+=("$tool ($why)")
        missing_packages+=("$package")
    fi
done
if ((${#missing_packages[@]})); then
    if [ "$(id -u)" = 0 ] && have apt-get; then
        echo "installing ${missing_packages[*]} with apt-get…" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_packages[@]}" >/dev/null
    else
        echo "The tests need these tools, which are missing:" >&2
        printf '  %s\n' "${missing_tools[@]}" >&2
        echo "  Debian/Ubuntu: sudo apt-get install -y ${missing_packages[*]}" >&2
        exit 1
    fi
fi
unset test_tools missing_tools missing_packages

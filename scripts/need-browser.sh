# Sourced by demo.sh and test.sh: makes sure Chromium and chromedriver are
# there, installing them with apt-get when running as root on Debian or
# Ubuntu, and otherwise saying exactly what to install.
have() { command -v "$1" >/dev/null 2>&1; }
if { have chromium || have chromium-browser || have google-chrome; } && have chromedriver; then
    return 0
fi
if [ "$(id -u)" = 0 ] && have apt-get; then
    echo "installing Chromium and chromedriver with apt-get…" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    return 0
fi
echo "Chromium and chromedriver are needed for the browser steps and are missing." >&2
echo "  Debian/Ubuntu: sudo apt-get install -y chromium chromium-driver" >&2
echo "  macOS:         brew install --cask chromium && brew install chromedriver" >&2
exit 1

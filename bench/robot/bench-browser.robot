*** Comments ***
The browser benchmark's 10 steps, as Robot Framework with SeleniumLibrary
runs them. tasuki-bench runs this file as
`robot --output NONE --report NONE --log NONE --variable URL:... --variable PROFILE:... --variable SHOT:... bench-browser.robot`,
with XDG_CONFIG_HOME and SE_OFFLINE set, and checks that it passed. The
Chromium flags and prefs are the ones `tasuki` launches Chromium with, and
chromedriver is the same binary (no selenium-manager, no network).

*** Settings ***
Library             SeleniumLibrary    timeout=30s    implicit_wait=0s    run_on_failure=Nothing

*** Variables ***
${URL}              http://127.0.0.1:8000/index.html
${PROFILE}          /tmp/tasuki-bench-robot-profile
${DOWNLOADS}        /tmp/tasuki-bench-robot-downloads
${SHOT}             /tmp/tasuki-bench-robot.png
${CHROMIUM}         /usr/bin/chromium
${CHROMEDRIVER}     /usr/bin/chromedriver
${CUSTOMER}         Bench
${STATUS}           Thank you, Bench! Order A-1004 is placed.
# The JavaScript of tasuki's browser.extract_table, on one line.
${EXTRACT_JS}       const table = arguments[0]; const text = (cell) => (cell.innerText || cell.textContent || '').trim(); const rows = Array.from(table.rows); if (rows.length === 0) { return { headers: [], rows: [] }; } const headerRow = (table.tHead && table.tHead.rows.length) ? table.tHead.rows[0] : rows[0]; const headers = Array.from(headerRow.cells).map((c, i) => text(c) || ('column_' + (i + 1))); const body = rows.filter((r) => r !== headerRow && !(table.tHead && table.tHead.contains(r))); return { headers: headers, rows: body.map((r) => { const row = {}; Array.from(r.cells).forEach((c, i) => { row[headers[i] || ('column_' + (i + 1))] = text(c); }); return row; }) };

*** Test Cases ***
Place An Order
    # 1. open (starts chromedriver and Chromium, then loads the page)
    Open Browser    ${URL}    chrome
    ...    options=binary_location="${CHROMIUM}";add_argument("--no-sandbox");add_argument("--disable-gpu");add_argument("--disable-dev-shm-usage");add_argument("--disable-background-networking");add_argument("--disable-component-update");add_argument("--disable-sync");add_argument("--no-first-run");add_argument("--no-default-browser-check");add_argument("--password-store=basic");add_argument("--headless=new");add_argument("--window-size=1280,800");add_argument("--user-data-dir=${PROFILE}");add_experimental_option("prefs", {"download.default_directory": "${DOWNLOADS}", "download.prompt_for_download": False, "safebrowsing.enabled": False})
    ...    executable_path=${CHROMEDRIVER}
    # 2. type (Input Text clears the field first)
    Input Text    css:#customer    ${CUSTOMER}
    # 3. select
    Select From List By Label    css:#item    Sash
    # 4. click
    Click Button    css:#submit
    # 5. wait
    Wait Until Element Contains    css:#status    Thank you
    # 6. read
    ${status}=    Get Text    css:#status
    Should Be Equal    ${status}    ${STATUS}
    # 7. extract
    ${table}=    Get WebElement    css:#orders
    ${data}=    Execute Javascript    ${EXTRACT_JS}    ARGUMENTS    ${table}
    Length Should Be    ${data}[rows]    4
    # 8. screenshot
    Capture Page Screenshot    ${SHOT}
    # 9. URL
    ${location}=    Get Location
    Should Be Equal    ${location}    ${URL}
    # 10. close
    Close Browser

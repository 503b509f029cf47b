//! Windows Job Objects: what holds a step's process tree on Windows, as a
//! process group does on Unix. Every process a step starts, and every
//! process those start, belongs to the step's job; the job can be asked how
//! many of them are alive and be ended as a whole, and it ends them all when
//! its last handle closes, even when the agent itself is killed.

use std::ffi::c_void;
use std::io;
use std::os::windows::io::{AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};

use windows_sys::Win32::Foundation::{CloseHandle, ERROR_MORE_DATA, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, PROCESSENTRY32W, Process32FirstW, Process32NextW, TH32CS_SNAPPROCESS,
    TH32CS_SNAPTHREAD, THREADENTRY32, Thread32First, Thread32Next,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, JOBOBJECT_BASIC_ACCOUNTING_INFORMATION,
    JOBOBJECT_BASIC_PROCESS_ID_LIST, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JobObjectBasicAccountingInformation, JobObjectBasicProcessIdList,
    JobObjectExtendedLimitInformation, QueryInformationJobObject, SetInformationJobObject,
    TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{OpenThread, ResumeThread, THREAD_SUSPEND_RESUME};

/// The exit code of processes ended with their job.
const TERMINATED_EXIT_CODE: u32 = 1;

/// A job object. Closing its handle (dropping it, or the agent's exit, however
/// abrupt) kills every process still in it.
#[derive(Debug)]
pub struct Job {
    handle: OwnedHandle,
}

impl Job {
    pub fn new() -> io::Result<Job> {
        // SAFETY: no security attributes and no name are valid arguments; the
        // returned handle is checked before it is owned.
        let raw = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if raw.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid handle that nothing else owns.
        let job = Job {
            handle: unsafe { OwnedHandle::from_raw_handle(raw) },
        };
        let mut limits = JOBOBJECT_EXTENDED_LIMIT_INFORMATION::default();
        // Kill on close: no process outlives the agent. Die on unhandled
        // exception: a crashing program exits instead of waiting, unattended,
        // on a "has stopped working" dialog until the step times out.
        limits.BasicLimitInformation.LimitFlags =
            JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION;
        // SAFETY: the pointer and size describe `limits`, which outlives the call.
        let ok = unsafe {
            SetInformationJobObject(
                job.raw(),
                JobObjectExtendedLimitInformation,
                (&raw const limits).cast::<c_void>(),
                size_of_u32::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(job)
    }

    fn raw(&self) -> *mut c_void {
        self.handle.as_raw_handle()
    }

    /// Puts a process in the job; the processes it starts from then on
    /// belong to the job too.
    pub fn assign(&self, process: BorrowedHandle<'_>) -> io::Result<()> {
        // SAFETY: both handles are valid for the duration of the call.
        let ok = unsafe { AssignProcessToJobObject(self.raw(), process.as_raw_handle()) };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// How many processes of the job have not exited. An exited process
    /// stops counting at once, even while someone holds a handle to it:
    /// Windows has no zombies.
    pub fn active_processes(&self) -> io::Result<u32> {
        let mut info = JOBOBJECT_BASIC_ACCOUNTING_INFORMATION::default();
        // SAFETY: the pointer and size describe `info`, which outlives the call.
        let ok = unsafe {
            QueryInformationJobObject(
                self.raw(),
                JobObjectBasicAccountingInformation,
                (&raw mut info).cast::<c_void>(),
                size_of_u32::<JOBOBJECT_BASIC_ACCOUNTING_INFORMATION>(),
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info.ActiveProcesses)
    }

    /// The ids of the job's processes that have not exited.
    pub fn process_ids(&self) -> io::Result<Vec<u32>> {
        // The list is a header (two u32s) then the ids, one usize each.
        let header = std::mem::offset_of!(JOBOBJECT_BASIC_PROCESS_ID_LIST, ProcessIdList)
            / size_of::<usize>();
        let mut capacity = 16;
        loop {
            let mut buffer = vec![0usize; header + capacity];
            let bytes = u32::try_from(buffer.len() * size_of::<usize>())
                .map_err(|_| io::Error::other("too many processes in the job"))?;
            // SAFETY: the buffer is writable for `bytes` bytes and aligned
            // for the structure, whose header it begins with.
            let ok = unsafe {
                QueryInformationJobObject(
                    self.raw(),
                    JobObjectBasicProcessIdList,
                    buffer.as_mut_ptr().cast::<c_void>(),
                    bytes,
                    std::ptr::null_mut(),
                )
            };
            // SAFETY: the buffer begins with the structure's header, which
            // the call fills in, on ERROR_MORE_DATA too.
            let list = unsafe { &*buffer.as_ptr().cast::<JOBOBJECT_BASIC_PROCESS_ID_LIST>() };
            if ok != 0 {
                let listed = (list.NumberOfProcessIdsInList as usize).min(capacity);
                // Process ids are DWORDs stored in ULONG_PTRs.
                let ids = &buffer[header..header + listed];
                return Ok(ids.iter().map(|&id| id as u32).collect());
            }
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(ERROR_MORE_DATA as i32) {
                return Err(error);
            }
            // More processes than room: make room for them all, and a few
            // more that may start meanwhile.
            capacity = (list.NumberOfAssignedProcesses as usize + 16).max(capacity * 2);
        }
    }

    /// The executable names (`cmd.exe`) of the job's processes that have
    /// not exited.
    pub fn process_names(&self) -> io::Result<Vec<String>> {
        let ids = self.process_ids()?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // SAFETY: a process snapshot takes no process id; the result is checked.
        let snapshot = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
        if snapshot == INVALID_HANDLE_VALUE || snapshot.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `snapshot` is a fresh, valid handle that nothing else owns.
        let snapshot = unsafe { OwnedHandle::from_raw_handle(snapshot) };
        let mut entry = PROCESSENTRY32W {
            dwSize: size_of_u32::<PROCESSENTRY32W>(),
            ..Default::default()
        };
        let mut names = Vec::with_capacity(ids.len());
        // SAFETY: `entry` is a PROCESSENTRY32W with its size set, as both
        // calls require.
        let mut more = unsafe { Process32FirstW(snapshot.as_raw_handle(), &raw mut entry) } != 0;
        while more {
            if ids.contains(&entry.th32ProcessID) {
                let name = &entry.szExeFile;
                let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                names.push(String::from_utf16_lossy(&name[..len]));
            }
            // SAFETY: as above.
            more = unsafe { Process32NextW(snapshot.as_raw_handle(), &raw mut entry) } != 0;
        }
        Ok(names)
    }

    /// Ends every process of the job. It returns before they are all gone:
    /// wait for `active_processes` to reach 0.
    pub fn terminate(&self) -> io::Result<()> {
        // SAFETY: the job handle is valid while `self` lives.
        let ok = unsafe { TerminateJobObject(self.raw(), TERMINATED_EXIT_CODE) };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn size_of_u32<T>() -> u32 {
    u32::try_from(std::mem::size_of::<T>()).expect("a Win32 structure is smaller than 4 GiB")
}

/// Resumes a process started with `CREATE_SUSPENDED` (so that it could join
/// its job before it could start anything): its threads, that is its one
/// initial thread. Std keeps no handle to that thread, so it is found
/// through a snapshot of the system's threads.
pub fn resume_suspended(pid: u32) -> io::Result<()> {
    // SAFETY: a thread snapshot takes no process id; the result is checked.
    let snapshot = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0) };
    if snapshot == INVALID_HANDLE_VALUE || snapshot.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `snapshot` is a fresh, valid handle that nothing else owns.
    let snapshot = unsafe { OwnedHandle::from_raw_handle(snapshot) };
    let mut entry = THREADENTRY32 {
        dwSize: size_of_u32::<THREADENTRY32>(),
        ..Default::default()
    };
    let mut resumed = 0;
    // SAFETY: `entry` is a THREADENTRY32 with its size set, as both calls require.
    let mut more = unsafe { Thread32First(snapshot.as_raw_handle(), &raw mut entry) } != 0;
    while more {
        if entry.th32OwnerProcessID == pid {
            resume_thread(entry.th32ThreadID)?;
            resumed += 1;
        }
        // SAFETY: as above.
        more = unsafe { Thread32Next(snapshot.as_raw_handle(), &raw mut entry) } != 0;
    }
    if resumed == 0 {
        return Err(io::Error::other(format!(
            "process {pid} has no thread to resume"
        )));
    }
    Ok(())
}

fn resume_thread(tid: u32) -> io::Result<()> {
    // SAFETY: OpenThread takes any thread id; the result is checked.
    let thread = unsafe { OpenThread(THREAD_SUSPEND_RESUME, 0, tid) };
    if thread.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `thread` is a valid handle, closed exactly once here.
    let previous = unsafe { ResumeThread(thread) };
    let result = if previous == u32::MAX {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: as above.
    unsafe { CloseHandle(thread) };
    result
}

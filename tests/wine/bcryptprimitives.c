/*
 * A stand-in for Windows' bcryptprimitives.dll, for running Rust programs under Wine.
 *
 * Rust's standard library (since 1.78) takes its randomness from ProcessPrng, which
 * Windows 10+ exports from bcryptprimitives.dll and imports at load time. Wine 8 has no
 * such DLL, so every Rust program fails to start there with "Library bcryptprimitives.dll
 * not found". This DLL exports only ProcessPrng, with the documented contract
 * (BOOL ProcessPrng(PBYTE, SIZE_T); it always succeeds on Windows), and draws the bytes
 * from advapi32's RtlGenRandom (SystemFunction036), which Wine has always provided.
 *
 * Built at test time by tests/support/wine.rs with x86_64-w64-mingw32-gcc; never shipped.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    /* RtlGenRandom takes a ULONG (32 bits); SIZE_T is 64. */
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}

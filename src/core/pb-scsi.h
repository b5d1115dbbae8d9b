/* SCSI command parsing for PbMassStorage: pure functions over a CDB, fuzzed. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS
/* (filled in by the mass-storage implementation) */
G_END_DECLS

/* PbMassStorage internals for the tests and the fuzz target; not installed, not exported from
 * the shared library.
 *
 * The I/O gate stands in for a stalled disk: the host running the unit tests cannot stall real
 * storage (the QEMU suite does that with a suspended device-mapper target on a real kernel), so
 * tests close the gate to keep media I/O pending for as long as they like. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* While closed, every media I/O of every PbMassStorage in the process waits in its worker thread
 * before it touches the image. Opening the gate lets them all go. */
G_GNUC_INTERNAL void pb_mass_storage_set_io_gate (gboolean closed);
/* Waits until at least n I/Os wait at the closed gate; FALSE after timeout_ms. */
G_GNUC_INTERNAL gboolean pb_mass_storage_wait_io_gated (guint n, guint timeout_ms);
/* I/Os in the process that are queued, running, or whose result the main context has not
 * consumed (or dropped) yet. */
G_GNUC_INTERNAL guint pb_mass_storage_get_io_count (void);
/* Whether I/O that cannot stall may skip the worker (try_io_now in pb-mass-storage.c; on by
 * default). The tests of the worker path turn it off. */
G_GNUC_INTERNAL void pb_mass_storage_set_fast_path (gboolean allowed);

G_END_DECLS

/* Helpers shared by the tests: free ports, spawned servers, raw loopback sockets. */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

/* Path of a built program under the build tree (PB_PLUGBOARD_BIN for "plugboard"). */
const char *pb_test_plugboard_path (void);
/* A scratch folder removed by pb_test_scratch_cleanup(); unique per process. */
char *pb_test_make_scratch_dir (void);
void pb_test_remove_tree (const char *path);

G_END_DECLS

/* PbOutputQueue: replies or requests waiting to be written to a non-blocking stream socket,
 * each a few iovecs (header, payload, iso descriptors) sent by gathered sendmsg calls so that a
 * message's header and payload leave in one write. Shared by PbExportSession and
 * PbRemoteDevice. Items are owned by the caller; the queue only links them. */
#pragma once

#include <glib.h>
#include <sys/uio.h>

G_BEGIN_DECLS

typedef struct {
  GList link;
  struct iovec iov[3];
  guint n_iov;
  gsize total;
} PbOutputItem;

typedef struct {
  GQueue items;
  gsize offset;       /* bytes of the head item already written */
  gsize queued_bytes; /* bytes not yet written */
} PbOutputQueue;

/* Called for each item once it is fully written (or dropped by clear). */
typedef void (*PbOutputItemDone) (PbOutputItem *item, gpointer user_data);

/* Appends item; its iov and n_iov must be set. */
void pb_output_queue_push (PbOutputQueue *queue, PbOutputItem *item);
/* Writes what the socket takes. Returns 1 when everything went out, 0 when the socket is full,
 * -1 on a write error (errno tells). */
int pb_output_queue_flush (PbOutputQueue *queue, int fd, PbOutputItemDone done, gpointer user_data);
/* Drops every item (done is called for each), e.g. when the connection is gone. */
void pb_output_queue_clear (PbOutputQueue *queue, PbOutputItemDone done, gpointer user_data);

static inline gboolean
pb_output_queue_is_empty (const PbOutputQueue *queue)
{
  return queue->items.head == NULL;
}

G_END_DECLS

#include "pb-output-queue.h"

#include <errno.h>
#include <sys/socket.h>

#define MAX_IOV 64

void
pb_output_queue_push (PbOutputQueue *queue, PbOutputItem *item)
{
  item->total = 0;
  for (guint i = 0; i < item->n_iov; i++)
    item->total += item->iov[i].iov_len;
  item->link.data = item;
  g_queue_push_tail_link (&queue->items, &item->link);
  queue->queued_bytes += item->total;
}

static void
pop_written (PbOutputQueue *queue, PbOutputItemDone done, gpointer user_data)
{
  while (queue->items.head != NULL)
    {
      PbOutputItem *item = queue->items.head->data;
      if (queue->offset < item->total)
        break;
      queue->offset -= item->total;
      queue->queued_bytes -= item->total;
      g_queue_unlink (&queue->items, &item->link);
      done (item, user_data);
    }
}

int
pb_output_queue_flush (PbOutputQueue *queue, int fd, PbOutputItemDone done, gpointer user_data)
{
  while (queue->items.head != NULL)
    {
      struct iovec iov[MAX_IOV];
      struct msghdr msg = { 0 };
      int n_iov = 0;
      gsize skip = queue->offset;
      gssize written;

      for (GList *l = queue->items.head; l != NULL && n_iov <= MAX_IOV - 3; l = l->next)
        {
          PbOutputItem *item = l->data;
          for (guint i = 0; i < item->n_iov; i++)
            {
              if (skip >= item->iov[i].iov_len)
                {
                  skip -= item->iov[i].iov_len;
                  continue;
                }
              iov[n_iov].iov_base = (guint8 *) item->iov[i].iov_base + skip;
              iov[n_iov].iov_len = item->iov[i].iov_len - skip;
              skip = 0;
              n_iov++;
            }
        }
      msg.msg_iov = iov;
      msg.msg_iovlen = n_iov;
      /* MSG_NOSIGNAL: a vanished peer is an error to handle, not a SIGPIPE. */
      written = sendmsg (fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (written < 0)
        {
          if (errno == EINTR)
            continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
          return -1;
        }
      queue->offset += (gsize) written;
      pop_written (queue, done, user_data);
    }
  return 1;
}

void
pb_output_queue_clear (PbOutputQueue *queue, PbOutputItemDone done, gpointer user_data)
{
  PbOutputItem *item;

  while ((item = g_queue_peek_head (&queue->items)) != NULL)
    {
      g_queue_unlink (&queue->items, &item->link);
      done (item, user_data);
    }
  queue->offset = 0;
  queue->queued_bytes = 0;
}

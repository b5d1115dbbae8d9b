#define G_LOG_DOMAIN "plugboard"

#include "pb-urb.h"

#include <string.h>

void
pb_urb_complete (PbUrb *urb, gint32 status, guint32 actual_length)
{
  g_return_if_fail (urb != NULL);

  if (actual_length > urb->length)
    {
      g_warning ("device completed URB %u with %u bytes for a %u-byte buffer; clamped",
                 urb->seqnum, actual_length, urb->length);
      actual_length = urb->length;
    }
  urb->status = status;
  urb->actual_length = actual_length;

  if (urb->intercept_func != NULL)
    urb->intercept_func (urb, urb->intercept_data);
  else
    pb_urb_give_back (urb);
}

void
pb_urb_give_back (PbUrb *urb)
{
  g_return_if_fail (urb->complete_func != NULL);
  urb->complete_func (urb, urb->complete_data);
}

void
pb_urb_complete_with_data (PbUrb *urb, const void *data, gsize len)
{
  gsize n = MIN (len, urb->length);

  if (n > 0)
    memcpy (urb->buffer, data, n);
  pb_urb_complete (urb, PB_URB_OK, (guint32) n);
}

// The REST reads the control room's detail views need: who the token is, the repositories
// Jules can work on, the archived sessions, a session's timeline and one activity with its
// whole patches.
//
// Every call resolves (never rejects) with {ok: true, body} or {ok: false, status, code,
// message}, so callers show a sentence rather than handle exceptions. `status` 0 means the
// service did not answer at all.

const ACTIVITIES_PAGE_SIZE = 100; // the service's maximum page: fewest round trips
// A real session has tens to a few hundred activities; this bounds a runaway timeline
// (5,000 activities) so a detail view can never loop on pages for ever.
const ACTIVITIES_PAGES_MAX = 50;
// Each page is a request to Jules: a drawer's worth, with "Load more" for the rest.
const ARCHIVED_PAGE_SIZE = 30;

export class Api {
  /** The token every request presents (the page sets it when it gets one). */
  token = '';

  /** GET a JSON body from the service. */
  async get(path) {
    let response;
    try {
      response = await fetch(path, {
        headers: { Authorization: `Bearer ${this.token}` },
        cache: 'no-store',
      });
    } catch {
      return { ok: false, status: 0, code: 'unreachable', message: 'no answer from the service' };
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      // an empty or non-JSON body: the status says enough
    }
    if (response.ok && body && typeof body === 'object') return { ok: true, body };
    const error = body && typeof body === 'object' ? body : {};
    return {
      ok: false,
      status: response.status,
      code: String(error.error || (response.ok ? 'bad_response' : `http_${response.status}`)),
      message: String(error.message || ''),
    };
  }

  /** `GET /api/me`: `{readOnly, commands}`. */
  me() {
    return this.get('/api/me');
  }

  /** `GET /api/sources`: `{sources: [{name, repository, defaultBranch?, branches, ...}]}`. */
  sources() {
    return this.get('/api/sources');
  }

  /**
   * `GET /api/sessions/archived`: one page of the archived sessions, newest first
   * (`{sessions, nextPageToken}`); `pageToken` is the previous page's `nextPageToken`.
   */
  archived(pageToken = '') {
    const query = new URLSearchParams({ pageSize: String(ARCHIVED_PAGE_SIZE) });
    if (pageToken) query.set('pageToken', pageToken);
    return this.get(`/api/sessions/archived?${query}`);
  }

  /**
   * A session's whole timeline, oldest first: every page of
   * `GET /api/sessions/{id}/activities`. Resolves with `{ok: true, body: {activities,
   * activitiesSeq, truncated}}`; `truncated` when it stopped at ACTIVITIES_PAGES_MAX pages.
   */
  async activities(sessionId) {
    const base = `/api/sessions/${encodeURIComponent(sessionId)}/activities`;
    const activities = [];
    let token = '';
    let activitiesSeq = null;
    for (let page = 0; page < ACTIVITIES_PAGES_MAX; page += 1) {
      const query = new URLSearchParams({ pageSize: String(ACTIVITIES_PAGE_SIZE) });
      if (token) query.set('pageToken', token);
      const answer = await this.get(`${base}?${query}`);
      if (!answer.ok) return answer;
      const body = answer.body;
      if (Array.isArray(body.activities)) activities.push(...body.activities);
      // The position of the first page: live activities after it are not in the listing.
      if (activitiesSeq === null && Number.isInteger(body.activitiesSeq)) {
        activitiesSeq = body.activitiesSeq;
      }
      token = typeof body.nextPageToken === 'string' ? body.nextPageToken : '';
      if (!token) return { ok: true, body: { activities, activitiesSeq, truncated: false } };
    }
    return { ok: true, body: { activities, activitiesSeq, truncated: true } };
  }

  /**
   * `GET /api/sessions/{id}/activities/{activityId}`: `{activity, patches: [{source,
   * unidiffPatch, baseCommitId, suggestedCommitMessage}]}`.
   */
  async activity(sessionId, activityId) {
    const path =
      `/api/sessions/${encodeURIComponent(sessionId)}` +
      `/activities/${encodeURIComponent(activityId)}`;
    const answer = await this.get(path);
    if (!answer.ok) return answer;
    const body = answer.body;
    const patches = body.patches ?? body.activity?.patches ?? [];
    return { ok: true, body: { activity: body.activity ?? body, patches } };
  }
}
